"""R1-Zero on a CPU: pretrain a tiny MoE base model on the embedded corpus, then GRPO with
rule-based rewards only (answer correct + strict <think>/<answer> format), and compare the
base and the trained policy on held-out questions.

Command:  python -m moe_rl.main --config=experiments/r1_zero.py
          any task: --config.task.name=rg:chain_sum (or countdown, rg:<dataset>, ...) with
                    its own knobs in --config.task.options ('' = its defaults)
          own base: --config.init_checkpoint=runs/pretrain_moe --config.model.vocab_size=264
                    --config.model.num_nextn_predict_layers=1 (that base has an MTP module)
Runtime:  on the 2-core EPYC VM: the base model ~11 min (corpus, BPE, 3600 pretraining steps
          of ~0.17 s; reused on re-runs), GRPO 6-10 min (40 steps of 8-17 s), two
          evaluations of ~30 s; per-seed times in docs/results/r1_zero/seeds.md. Over the
          15-minute goal.
Result:   held-out 2-digit addition (128 test questions x 4 samples, T=0.6), seeds 0-4
          (`--seeds=0-4`, docs/results/r1_zero/seeds.md): pass@1 from 0.10-0.37 to 0.64-0.96
          (+48 to +68 points), the responses growing to ~78 tokens (column addition with the
          digits so far replaces guessing). Written: the table (printed and in
          runs/r1_zero/summary.json); r1_zero.png (accuracy, format, length, reward, KL,
          entropy over steps); samples.txt (completions during training), eval_samples.txt;
          metrics.jsonl and TensorBoard events. Re-running resumes (the base model and GRPO
          checkpoints).
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import configs


def get_config(model: str = "tiny") -> ConfigDict:
    return ConfigDict(
        dict(
            name="r1_zero" if model == "tiny" else f"r1_zero_{model}",
            recipe="r1_zero",
            seed=0,
            init_checkpoint="",  # a workdir with a pretrained checkpoint; '' = pretrain one now
            # No MTP module: at this size it is one more transformer block, a third of every
            # pretraining step (docs/results/r1_zero/train_step_parts.md); the policy never
            # uses it.
            model=preset(model, vocab_size=384, num_nextn_predict_layers=0),
            tokenizer="base",  # 'base': the base model's own (its learned BPE), or a name/path
            # The base model's pretraining (used only when init_checkpoint is ''); the same
            # blocks as experiments/pretrain_moe.py.
            pretrain=dict(
                recipe="pretrain",
                # Mostly additions, half the thinks worked (by columns, with the digits so far) and
                # half a bare guess (data/arithmetic.py MIXES['r1']); a BPE learned on it (digits
                # split) encodes the 450-byte R1-Zero prompt in ~120 tokens. Small batches, many
                # steps: the model learns to copy the question's digits (a loss drop near step
                # 1000-1400) and to add them column by column. With fewer steps or without the
                # digits so far, some seeds' bases guess more often right than they add, and GRPO
                # then reinforces guessing (docs/results/r1_zero/README.md).
                data=configs.data(mix="r1", tokenizer="bpe:384"),
                train=configs.train(seq_len=256, batch_size=8, num_steps=3600),
                optim=configs.optim(),
                mesh=configs.mesh(),
            ),
            task=dict(
                name="arithmetic",  # a built-in task, rg:<name> or tfds:<name>
                # The task's knobs, "name=value,...", e.g. "num_digits=3,operators='+-'";
                # '' = its defaults (arithmetic: a + b with numbers of up to 2 digits).
                options="",
                template="r1_zero",  # r1_zero | plain | chat
                think_opened=False,  # prompt ends with '<think>' (TinyZero style)
                seed=0,  # question order (train) and the held-out questions (test)
            ),
            # A column addition of two 2-digit numbers takes ~80 tokens.
            sampling=configs.sampling(max_new_tokens=112),
            grpo=configs.grpo(num_steps=40),
            optim=configs.optim(learning_rate=3e-4, warmup_steps=5, weight_decay=0.0),
            # GRPO's devices (the base's pretraining has its own, pretrain.mesh)
            mesh=configs.mesh(),
            eval=configs.r1_eval(max_new_tokens=112),
        )
    )
