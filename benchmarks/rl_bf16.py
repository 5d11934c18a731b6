"""The table and figure of issue 18's experiment: R1-Zero at float32, at bfloat16, and at
bfloat16 with routing replay + TIS (experiments/r1_zero_bf16.py), seed by seed.

    python benchmarks/rl_bf16.py [--runs=runs] [--seeds=0-2] [--out=docs/results/rl_moe]

Reads the three sweeps' folders (<runs>/r1_zero, <runs>/r1_zero_bf16_plain,
<runs>/r1_zero_bf16_replay; their seed_<n>/summary.json and metrics.jsonl) and writes
bf16.md, bf16.json and bf16.png to --out: per seed and variant the held-out pass@1 of the base
(evaluated in that variant's dtype) and of the policy, the format rate, the response length,
the sampler/trainer mismatch over training (mean of mismatch_mean, max of mismatch_max, mean
of routing_mismatch) and the minutes; per variant the mean, std and min over seeds; the figure
draws the mismatch metrics and the training-split accuracy against the GRPO step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moe_rl import sweep  # noqa: E402
from moe_rl.metrics import read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # label: the sweep's folder name
    "float32": "r1_zero",
    "bfloat16": "r1_zero_bf16_plain",
    "bfloat16 + replay + TIS": "r1_zero_bf16_replay",
}
COLORS = {"float32": "tab:gray", "bfloat16": "tab:red", "bfloat16 + replay + TIS": "tab:blue"}
CURVES = (
    ("mismatch_mean", "mean |log pi_sampler - log pi_trainer|"),
    ("mismatch_max", "max |log pi_sampler - log pi_trainer|"),
    ("routing_mismatch", "routing decisions differing"),
    ("sampled_accuracy", "training-split accuracy (sampled)"),
)


def seed_row(folder: str) -> tuple[dict[str, float], list[dict]]:
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    steps = [r for r in read_metrics(folder) if "reward" in r]
    before, after = summary["before"], summary["after"]
    seconds = summary["seconds"]
    row = {
        "base pass@1": before["pass@1"],
        "pass@1": after["pass@1"],
        "gain": after["pass@1"] - before["pass@1"],
        "format": after["format_rate"],
        "length": after["mean_length"],
        "mismatch mean": float(np.mean([r["mismatch_mean"] for r in steps])),
        "mismatch max": float(np.max([r["mismatch_max"] for r in steps])),
        "routing differing": float(np.mean([r["routing_mismatch"] for r in steps])),
        # GRPO and the two evaluations (the base is reused from experiments/r1_zero.py's run)
        "minutes": (seconds["total"] - seconds["base"]) / 60,
    }
    return row, steps


def figure(curves: dict[str, dict[int, list[dict]]], path: str) -> str:
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.8))
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        for label, seeds in curves.items():
            for i, (seed, rows) in enumerate(sorted(seeds.items())):
                ax.plot(
                    [r["step"] for r in rows],
                    [r[key] for r in rows],
                    color=COLORS[label],
                    alpha=0.85,
                    lw=1.3,
                    ls=("-", "--", ":", "-.")[i % 4],
                    label=f"{label}, seed {seed}",
                )
        if key.startswith("mismatch"):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("R1-Zero on the tiny MoE: sampler/trainer mismatch at float32 and bfloat16")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "rl_moe"))
    args = parser.parse_args()
    seeds = sweep.parse_seeds(args.seeds)
    tables, results, curves = [], {}, {}
    for label, name in VARIANTS.items():
        rows, curves[label] = {}, {}
        for seed in seeds:
            folder = os.path.join(args.runs, name, f"seed_{seed}")
            if not os.path.exists(os.path.join(folder, "summary.json")):
                raise SystemExit(f"{folder}/summary.json is missing: run the experiment first")
            rows[seed], curves[label][seed] = seed_row(folder)
        stats = sweep.summarize(rows)
        results[label] = {"folder": os.path.join(args.runs, name), "rows": rows, "stats": stats}
        tables.append(f"### {label} ({name})\n\n{sweep.seeds_table(rows, stats)}")
    os.makedirs(args.out, exist_ok=True)
    plot = figure(curves, os.path.join(args.out, "bf16.png"))
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    header = (
        f"R1-Zero (experiments/r1_zero.py, 40 GRPO steps) from each seed's float32 base, at "
        f"float32, bfloat16 and bfloat16 with routing replay + TIS (experiments/r1_zero_bf16.py); "
        f"held-out pass@1 of 128 questions x 4 samples; mismatch columns over the training steps "
        f"(mean of each step's mean, max of its max, mean share of routing decisions that "
        f"differ); {machine}; benchmarks/rl_bf16.py"
    )
    text = header + "\n\n" + "\n\n".join(tables) + "\n"
    with open(os.path.join(args.out, "bf16.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "bf16.json"), "w") as f:
        json.dump({"header": header, "variants": results}, f, indent=2)
    print(text)
    print(f"figure: {plot}")


if __name__ == "__main__":
    main()
