"""R1-Zero on Countdown (TinyZero's task): a tiny MoE base pretrained on the embedded corpus's
Countdown mix, then GRPO with the answer reward only: a search that has to keep trying.

Each question gives 3 numbers from 1..10 and a target up to 100; the answer is an expression
using each number at most once (moe_rl.data.tasks.countdown, checked by our own expression
parser, never `eval`). The base's corpus (data/arithmetic.py MIXES['countdown']) solves such
puzzles by trial: 1 to 6 random expressions, each worked step by step and compared with the
target, the search ending at the first hit or with "I stop here." and a wrong answer; a third of
its thinks are a bare claim instead. Nothing in it says which expression to try: a base tries
~3 and is mostly wrong. RL rewards only the final expression.

Command:  python -m moe_rl.main --config=experiments/r1_zero_countdown.py [--seeds=0-2]
Runtime:  see docs/results/r1_zero_countdown/seeds.md (the base ~11 min on the 2-core VM).
Result:   docs/results/r1_zero_countdown/: held-out pass@1 before and after, per seed, and the
          search before and after (tries per response, share with more than one try, share
          of responses whose answer is an expression they checked), from
          docs/results/r1_zero_countdown/search_stats.py.
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import configs

# A try ("Try (7 + 5) * 3: 7 + 5 = 12, 12 * 3 = 36, not 22.") is ~35 tokens: room for 6.
MAX_NEW_TOKENS = 224


def get_config() -> ConfigDict:
    return ConfigDict(
        dict(
            name="r1_zero_countdown",
            recipe="r1_zero",
            seed=0,
            init_checkpoint="",  # a workdir with a pretrained checkpoint; '' = pretrain one now
            model=preset("tiny", vocab_size=384, num_nextn_predict_layers=0),
            tokenizer="base",
            pretrain=dict(
                recipe="pretrain",
                data=configs.data(mix="countdown", tokenizer="bpe:384"),
                train=configs.train(seq_len=256, batch_size=8, num_steps=3600),
                optim=configs.optim(),
                mesh=configs.mesh(),
            ),
            task=dict(
                name="countdown",
                options="",  # its defaults: 3 numbers in 1..10, target <= 100, at most once
                template="r1_zero",
                think_opened=False,
                seed=0,
            ),
            sampling=configs.sampling(max_new_tokens=MAX_NEW_TOKENS),
            grpo=configs.grpo(num_steps=40),
            optim=configs.optim(learning_rate=3e-4, warmup_steps=5, weight_decay=0.0),
            mesh=configs.mesh(),
            eval=configs.r1_eval(max_new_tokens=MAX_NEW_TOKENS),
        )
    )
