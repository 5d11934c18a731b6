"""R1-Zero on Countdown (TinyZero's task): a tiny MoE base pretrained on the embedded corpus's
Countdown mix, then GRPO with the answer reward only: a search that has to keep trying.

Each question gives 3 numbers from 1..10 and a target up to 100; the answer is an expression
using each number at most once (moe_rl.data.tasks.countdown, checked by our own expression
parser, never `eval`). The base's corpus (data/arithmetic.py MIXES['countdown_drilled']) solves
such puzzles by trial: the target restated ("Target: 22."), then random expressions, each worked
step by step and compared with the target side by side ("12 * 3 = 36, 36 vs 22: no."), the
search going on to a hit ("22 vs 22: found it.") or to its sixth try and "I stop here." (10% of
the documents carry a slip; a fifth of the corpus drills the comparisons). Numbers are single
tokens (tokenizer 'bpe:1024:numbers'), so that a hit is two equal tokens side by side. Nothing
in the corpus says which expression to try. RL rewards only the final expression.

Command:  python -m moe_rl.main --config=experiments/r1_zero_countdown.py [--seeds=0-2]
Runtime:  seed 0 on the tenth session's 2-core VM: 15.2 min (base 5.5: 3600 steps of 4 x 512
          tokens; its evaluation 0.4; GRPO 9.0: 100 steps of ~5 s, the R1-Zero prompt + up to
          320 new tokens; final evaluation 0.3).
Result:   not yet the goal (+20 points on 3 seeds, <= 20 min): seed 0's held-out pass@1
          0.311 -> 0.346 (+3.5, pilot 17, this config, tenth session's VM); seeds 1 and 2
          0.111 -> 0.211 (+10.0) and 0.158 -> 0.266 (+10.7), 16.8 and 16.5 min. Earlier recipes:
          0.182 -> 0.264 (+8.2, pilot 8, sixth session's VM), 0.129 -> 0.176 (+4.7, pilot 14,
          ninth). docs/results/r1_zero_countdown/ (README: the attempts and what to try next;
          attempts/pilot<N>.json: each one's statistics of the search before and after).
"""

from ml_collections import ConfigDict

from moe_rl.train import configs

# A search of 12 tries and its answer run to ~330 tokens ('bpe:1024:spaced': ~25 a try); with
# the R1-Zero prompt (~100 tokens) that stays inside the 512 positions the base was trained on.
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
