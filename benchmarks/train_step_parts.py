"""What a pretraining step of the tiny MoE costs, part by part: with and without the MTP
module, with fewer layers, and with the dense-oracle MoE, as ratios to the default step
measured in the same run.

    python benchmarks/train_step_parts.py [--batch=8] [--seq_len=256] [--vocab_size=384]

The step is benchmarks/mfu.py's (the jitted `lm.make_train_step`, state donated, random tokens),
the median of --steps steps after one compile step. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys

from moe_rl import perf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mfu import pretrain_step  # noqa: E402  (benchmarks/mfu.py)

VARIANTS = {
    "default (tiny preset)": {},
    "no MTP module (R1-Zero's base)": dict(num_nextn_predict_layers=0),
    "no MTP, 2 layers": dict(num_nextn_predict_layers=0, num_hidden_layers=2),
    "no MTP, moe_impl=dense": dict(num_nextn_predict_layers=0, moe_impl="dense"),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--vocab_size", type=int, default=384)
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args()
    print(perf.machine_description())
    print(f"tiny MoE train step, {a.batch} x {a.seq_len} tokens, vocab {a.vocab_size}\n")
    rows = []
    for name, overrides in VARIANTS.items():
        r = pretrain_step("tiny", a.batch, a.seq_len, a.steps, vocab_size=a.vocab_size, **overrides)
        rows.append((name, 1000 * r["seconds"]))
    base = rows[0][1]
    print("| variant | ms / step | vs default |\n| --- | ---: | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
