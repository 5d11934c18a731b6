"""The DeepSeek-R1 pipeline at small scale (moe_rl/recipes/r1.py): cold-start SFT on worked
examples -> GRPO -> rejection sampling of the RL model -> SFT of the base on the combined data
-> a final GRPO stage; every stage evaluated on the same held-out questions.

Command:  python -m moe_rl.main --config=experiments/r1.py
          reuse a base: --config.init_checkpoint=runs/r1_zero/base (an experiments/r1_zero.py
                        run's pretrained base; its tokenizer comes with it)
          no final RL:  --config.final_grpo.num_steps=0
Runtime:  13.0 min on a 2-core CPU from a pretrained base (+12 min to pretrain one), measured:
          cold start 1.0, GRPO 3.8, rejection sampling 1.4, SFT 2.2, final GRPO 2.7,
          evaluations and compiles the rest.
Result:   measured from experiments/r1_zero.py's base (seed 0, 128 held-out questions x 4):
          pass@1 base 0.104, cold start 0.656, GRPO 0.832, SFT 0.877, final GRPO 0.855
          (format 1.000). Printed as a table per stage and in runs/r1/summary.json; each
          stage's folder (cold_start/, rl/, sft/, rl2/) holds its checkpoints, metrics and
          plots; data/ holds the cold-start examples and the kept RL answers.
"""

from ml_collections import ConfigDict

from moe_rl.train import configs


def get_config() -> ConfigDict:
    # The R1-Zero config: model, base pretraining, task, sampling, GRPO and eval settings.
    config = configs.r1_zero()
    config.name = "r1"
    config.recipe = "r1"
    config.grpo.num_steps = 60  # stage 2 (from a model that already writes worked sums)
    # Stage 1: a few hundred program-written long reasoning examples (data/cold_start.py).
    config.cold_start = ConfigDict(
        dict(
            num_examples=512,
            question_seed=2,  # training questions, drawn apart from GRPO's stream
            validation_fraction=0.05,
            data=configs.data(),
            train=configs.train(seq_len=256, batch_size=8, num_steps=100, eval_every=50),
            optim=configs.optim(learning_rate=1e-3, warmup_steps=10),
        )
    )
    # Stage 3: the RL model answers training questions k times; verified answers are kept.
    config.rejection = ConfigDict(
        dict(
            num_questions=1024,
            question_seed=3,
            samples_per_question=4,
            shortest_only=False,
            sampling=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=80),
        )
    )
    # Stage 4: SFT of the base on the kept answers + the cold-start examples.
    config.sft = ConfigDict(
        dict(
            validation_fraction=0.05,
            data=configs.data(),
            train=configs.train(seq_len=256, batch_size=8, num_steps=300),
            optim=configs.optim(learning_rate=1e-3, warmup_steps=20),
        )
    )
    # Stage 5: GRPO from the SFT model with the stage-2 settings; 0 skips it.
    config.final_grpo = ConfigDict(dict(num_steps=40))
    return config
