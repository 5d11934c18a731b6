"""Seconds per GRPO step, synchronous against one-step-off-policy rollouts (grpo.off_policy_steps).

    python benchmarks/off_policy.py --init=<an R1-Zero base workdir> [--steps=10] [--out=...]

Runs the R1-Zero recipe's GRPO (experiments/r1_zero.py, its model, task, G=16 and dynamic
sampling) from the base for --steps steps twice, into temporary workdirs: with
off_policy_steps=0 (sample, then update) and 1 (step n+1's rollouts sampled in a thread while
step n updates, `grpo_step.OffPolicyStep`), both with old_logprobs='recompute' so that the
steps do the same work. Reports the median over the steps after the first two (compilation,
and the first off-policy step's unoverlapped rollout) of the seconds between two steps'
completions, of the rollout's and of the update's, and the ratio of the step times measured in
the same run; writes off_policy.md / off_policy.json to --out (default: docs/results/rl_moe).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import tempfile
import time

import numpy as np

from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import r1_zero
from moe_rl.train import grpo, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("step_seconds", "rollout_seconds", "ref_seconds", "train_seconds")


def run(init: str, steps: int, off_policy_steps: int, workdir: str) -> dict:
    config = runpy.run_path(os.path.join(ROOT, "experiments", "r1_zero.py"))["get_config"]()
    config.update_from_flattened_dict(
        {
            "init_checkpoint": init,
            "grpo.num_steps": steps,
            "grpo.off_policy_steps": off_policy_steps,
            "grpo.old_logprobs": "recompute",
            "grpo.checkpoint_every": steps,
            "grpo.samples_every": 0,
        }
    )
    grpo.validate_grpo_config(config)
    cfg = ModelConfig.from_config(config.model)
    tokenizer = tokenizers.get_tokenizer(grpo.base_tokenizer(config, workdir))
    params, model_state, _ = r1_zero.base_model(config, cfg, workdir)
    task = task_from_config(config.task)
    start = time.perf_counter()
    grpo.train(config, cfg, task, tokenizer, params, model_state, workdir, None)
    total = time.perf_counter() - start
    rows = [r for r in loop.read_metrics(workdir) if "reward" in r][2:]
    out = {k: float(np.median([r[k] for r in rows])) for k in KEYS}
    out["accuracy"] = float(np.mean([r["sampled_accuracy"] for r in rows]))
    out["total_seconds"] = total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="a workdir with the base's checkpoint")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "rl_moe"))
    args = parser.parse_args()
    if args.steps < 4:
        raise SystemExit("--steps must be >= 4 (the first two are left out of the medians)")
    results = {}
    for mode in (0, 1):
        with tempfile.TemporaryDirectory() as workdir:
            results[mode] = run(args.init, args.steps, mode, workdir)
    header = (
        f"GRPO steps of experiments/r1_zero.py from {args.init} ({args.steps} steps, medians of "
        f"steps 3-{args.steps}; old_logprobs='recompute'); {platform.machine()}, "
        f"{os.cpu_count()} cores; benchmarks/off_policy.py"
    )
    lines = [
        "| off_policy_steps | step s | rollout s | reference s | update s | "
        "sampled accuracy | step time / synchronous |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in results.items():
        ratio = r["step_seconds"] / results[0]["step_seconds"]
        lines.append(
            f"| {mode} | {r['step_seconds']:.2f} | {r['rollout_seconds']:.2f} | "
            f"{r['ref_seconds']:.2f} | {r['train_seconds']:.2f} | {r['accuracy']:.3f} | "
            f"{ratio:.2f} |"
        )
    text = header + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "off_policy.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "off_policy.json"), "w") as f:
        json.dump({"header": header, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
