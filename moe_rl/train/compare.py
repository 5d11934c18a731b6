"""Recipe 'moe_vs_dense': pretrain an MoE and a dense model on the same tokens and compare.

DeepSeek-V3's first claim at laptop scale: at equal *activated* parameters (equal compute per
token) the MoE, with several times the total parameters, reaches a lower validation loss.
"""

from __future__ import annotations

import json
import os

import ml_collections

from moe_rl import plots
from moe_rl.models import counting
from moe_rl.models.config import ModelConfig
from moe_rl.train import lm


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.moe_model and config.dense_model with identical data/train/optim blocks."""
    results = {}
    for name in ("moe", "dense"):
        sub = ml_collections.ConfigDict(config.to_dict())
        sub.recipe = "pretrain"
        sub.model = config[f"{name}_model"]
        del sub["moe_model"], sub["dense_model"]
        ModelConfig.from_config(sub.model)  # both validated before the first one trains
        results[name] = sub
    summaries = {name: lm.run(sub, os.path.join(workdir, name)) for name, sub in results.items()}
    table = comparison_table(
        {name: ModelConfig.from_config(results[name].model) for name in results},
        summaries,
        config.train.seq_len,
    )
    print(table)
    out = {name: {k: v for k, v in s.items() if k != "plots"} for name, s in summaries.items()}
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(out, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(table + "\n")
    plots.plot_runs(
        {name: os.path.join(workdir, name) for name in summaries},
        ["ce", "val_loss"],
        os.path.join(workdir, "comparison.png"),
        title="MoE vs dense at equal activated parameters",
    )
    return out


def comparison_table(
    models: dict[str, ModelConfig], summaries: dict[str, dict], seq_len: int
) -> str:
    """Markdown table: params, activated params, FLOPs/token, tokens/s, MFU, final val loss."""
    rows = [
        "| model | params | activated params | train FLOPs/token | tokens/s | MFU | val loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in models.items():
        s = summaries[name]
        c = counting.param_counts(m)
        val = s["final_val_loss"]
        flops = counting.flops_per_token(m, seq_len)
        rows.append(
            f"| {name} | {c['total']:,} | {c['activated']:,} | {flops:.3g} "
            f"| {s['tokens_per_s']:,.0f} | {100 * s['mfu']:.1f}% | {val:.3f} |"
        )
    return "\n".join(rows)
