"""R1-Zero on Countdown (TinyZero's task): a tiny MoE base pretrained on the embedded corpus's
Countdown mix, then GRPO with the answer reward only: a search that has to keep trying.

Each question gives 3 numbers from 1..10 and a target up to 100; the answer is an expression
using each number at most once (moe_rl.data.tasks.countdown, checked by our own expression
parser, never `eval`). The base's corpus (data/arithmetic.py MIXES['countdown_long']) solves
such puzzles by trial: the target restated ("Target: 22."), then random expressions, each worked
step by step and compared with the target side by side ("12 * 3 = 36, 36 vs 22: no."), the
search going on to a hit ("22 vs 22: found it.") or giving up ("I stop here."): after each miss
a writer goes on with probability 0.8, up to 12 tries, so most searches stop short of what
patience would reach (10% of the documents carry a slip; a fifth of the corpus drills the
comparisons). Numbers with their leading space are single tokens (tokenizer
'bpe:1024:spaced'), so that a hit is two equal tokens side by side. Nothing in the corpus says
which expression to try. RL rewards only the final expression.

Command:  python -m moe_rl.main --config=experiments/r1_zero_countdown.py [--seeds=0-2]
Runtime:  18.2 / 19.1 / 18.9 min for seeds 0 / 1 / 2 on the eleventh session's 2-core VM, alone
          (base 4.9-5.2: 3600 steps of 4 x 512 tokens; its evaluation 0.5; GRPO 12.0-13.0: 100
          steps of ~7 s, the R1-Zero prompt + up to 384 new tokens; final evaluation ~0.5).
Result:   held-out pass@1 0.295 -> 0.475 (+18.0), 0.275 -> 0.461 (+18.6), 0.301 -> 0.426
          (+12.5) for seeds 0-2 (mean +16.3, min +12.5; the goal, +20 on 3 seeds, not yet met).
          The policy gives up less (54-61% of the base's answers end in "I stop here", 0%, 0% and
          45% of the policy's), tries ~8 expressions instead of 5-6, and its answers grow from
          153-177 to 223-239 tokens. docs/results/r1_zero_countdown/ (README: every attempt and
          what it changed; seeds_session_11.md; attempts/*.json: each run's search statistics).
"""

from ml_collections import ConfigDict

from moe_rl.train import configs

# A search of 12 tries and its answer run to ~330 tokens ('bpe:1024:spaced': ~25 a try); with
# the R1-Zero prompt (~120 tokens) that stays inside the 512 positions the base was trained on.
# GRPO's policy stops giving up and searches until it hits or the budget ends (pilot 18).
MAX_NEW_TOKENS = 384


def get_config() -> ConfigDict:
    # experiments/r1_zero.py's recipe (moe_rl/train/configs.py r1_zero) with its own task, corpus
    # and lengths, and refills of the missing groups; nothing else differs (tests/test_grpo.py
    # checks it).
    config = configs.r1_zero()
    config.name = "r1_zero_countdown"
    config.task.name = "countdown"  # its defaults: 3 numbers in 1..10, target <= 100, at most once
    # Twice the comparison drills of 'countdown_patient' (pilot 15: the base then calls "found
    # it" on every hit it reaches; pilot 14's base, on 47%), and writers who give up early and
    # sometimes search long: after a miss one goes on with probability 0.8, up to 12 tries
    # (pilot 18; before, every writer tried 6 and stopped, and so did the policy).
    config.pretrain.data.mix = "countdown_long"
    # Rows of 512 tokens, 4 per step (the same tokens per step as 8 x 256): at 256, a third of
    # the documents (a search runs to ~380 tokens) were cut into pieces whose positions start
    # again at 0, so the base had never attended further than 255 tokens back and derailed
    # after ~210 tokens of its answer (pilots 15-16: format 0.53); whole, format 0.996 (pilot 17).
    config.pretrain.train.seq_len = 512
    config.pretrain.train.batch_size = 4
    # Whole numbers as tokens (digit runs unsplit): the base then compares its try's value with
    # the target (pilots 5-6, docs/results/r1_zero_countdown/README.md); with the space before
    # a number in its token (" 36"), a try takes ~25 tokens instead of ~36 (pilot 18).
    config.pretrain.data.tokenizer = "bpe:1024:spaced"
    config.model.vocab_size = 1024
    config.sampling.max_new_tokens = MAX_NEW_TOKENS
    config.eval.sampling.max_new_tokens = MAX_NEW_TOKENS
    # A refill round samples only the missing groups, not a whole batch: at accuracy ~0.1 a
    # refill comes at almost every step (pilots 10 and 14).
    config.grpo.refill = "missing"
    # The training questions' sampled accuracy still rose at step 40 and at step 100 (pilots
    # 15-16); a step costs ~6-7 s, so 100 fit the 20 minutes.
    config.grpo.num_steps = 100
    return config
