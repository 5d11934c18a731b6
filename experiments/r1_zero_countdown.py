"""R1-Zero on Countdown (TinyZero's task): a tiny MoE base pretrained on the embedded corpus's
Countdown mix, then GRPO with the answer reward only: a search that has to keep trying.

Each question gives 3 numbers from 1..10 and a target up to 100; the answer is an expression
using each number at most once (moe_rl.data.tasks.countdown, checked by our own expression
parser, never `eval`). The base's corpus (data/arithmetic.py MIXES['countdown']) solves such
puzzles by trial: the target restated ("Target: 22."), then 1 to 6 random expressions, each
worked step by step and compared with the target, the search ending at the first hit or with
"I stop here." and a wrong answer (10% of the documents carry a slip). Nothing in it says which
expression to try: a base tries ~3 and is mostly wrong. RL rewards only the final expression.

Command:  python -m moe_rl.main --config=experiments/r1_zero_countdown.py [--seeds=0-2]
Runtime:  seed 0 alone on the 2-core VM: 14.5 min (base 6.1, its evaluation 0.4, GRPO 7.8: 40
          steps of 9-14 s, the R1-Zero prompt of 191 tokens + up to 224 new ones).
Result:   not yet the goal (+20 points): seed 0's held-out pass@1 0.059 -> 0.135. The base
          searches (3.3 tries per answer); GRPO collapsed the search to one more accurate try.
          docs/results/r1_zero_countdown/ (README: the six attempts and what to try next;
          search.md: tries, checked answers, step accuracy and target copying before/after,
          from docs/results/r1_zero_countdown/search_stats.py).
"""

from ml_collections import ConfigDict

from moe_rl.train import configs

# A try ("Try (7 + 5) * 3: 7 + 5 = 12, 12 * 3 = 36, not 22.") is ~35 tokens: room for 6.
MAX_NEW_TOKENS = 224


def get_config() -> ConfigDict:
    # experiments/r1_zero.py's recipe (moe_rl/train/configs.py r1_zero) with its own task, corpus
    # and lengths; nothing else differs (tests/test_grpo.py checks it).
    config = configs.r1_zero()
    config.name = "r1_zero_countdown"
    config.task.name = "countdown"  # its defaults: 3 numbers in 1..10, target <= 100, at most once
    config.pretrain.data.mix = "countdown"
    config.sampling.max_new_tokens = MAX_NEW_TOKENS
    config.eval.sampling.max_new_tokens = MAX_NEW_TOKENS
    return config
