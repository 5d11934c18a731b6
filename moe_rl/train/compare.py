"""The MoE-vs-dense comparison's analysis (recipe 'moe_vs_dense', moe_rl/recipes/moe_vs_dense.py):
the config checks and each model's pretraining config, training FLOPs and seconds at every
evaluation (cost curves), the cost for the MoE to reach the dense model's final loss, and the
comparison's row and table."""

from __future__ import annotations

import ml_collections
import numpy as np

from moe_rl.data import corpus
from moe_rl.models import counting
from moe_rl.models.config import ModelConfig

NAMES = ("moe", "dense")


def _invalid(message: str) -> ValueError:
    return ValueError(f"Invalid config: {message}")


def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with a labelled corpus named by its size (corpus.skills_name, facts_name,
    lookup_name) and the checkpoints the value-loss evaluation reads (one per evaluation, all
    kept); checks what the comparison needs, before anything compiles. Errors name the key."""
    config = ml_collections.ConfigDict(config.to_dict())
    d, t = config.data, config.train
    if t.eval_every <= 0 or t.eval_batches <= 0:
        raise _invalid(
            f"train.eval_every={t.eval_every} and train.eval_batches={t.eval_batches} must be > 0: "
            "the comparison needs validation curves"
        )
    if config.moe_model.n_routed_experts <= 0:
        raise _invalid(
            f"moe_model.n_routed_experts={config.moe_model.n_routed_experts} must be > 0"
        )
    if config.dense_model.n_routed_experts:
        raise _invalid(
            f"dense_model.n_routed_experts={config.dense_model.n_routed_experts} must be 0"
        )
    models = {name: ModelConfig.from_config(config[f"{name}_model"]) for name in NAMES}
    flops = {name: counting.flops_per_token(m, t.seq_len) for name, m in models.items()}
    gap = flops["moe"] / flops["dense"] - 1
    if abs(gap) > config.max_flops_gap:
        raise _invalid(
            f"moe_model activates {flops['moe']:.4g} FLOPs/token and dense_model "
            f"{flops['dense']:.4g} ({100 * gap:+.1f}%), more than max_flops_gap="
            f"{config.max_flops_gap}: size moe_model.moe_intermediate_size x "
            "(n_shared_experts + num_experts_per_tok) like dense_model.intermediate_size"
        )
    if corpus.is_labelled(d.name) and d.tokenizer != "byte":
        raise _invalid(
            f"data.tokenizer={d.tokenizer!r}: the value loss of {d.name} reads byte offsets, "
            "so it needs 'byte'"
        )
    try:
        if d.name == corpus.FACTS:
            d.name = corpus.facts_name(
                d.num_people, d.num_documents, d.num_validation, d.corpus_seed
            )
        elif d.name == corpus.SKILLS:
            d.name = corpus.skills_name(
                d.num_skills, d.zipf, d.num_documents, d.num_validation, d.corpus_seed
            )
        elif d.name == corpus.LOOKUP:
            d.name = corpus.lookup_name(
                d.num_keys, d.num_documents, d.num_validation, d.corpus_seed
            )
    except ValueError as e:
        raise _invalid(f"data: {e}") from None
    t.checkpoint_every = t.eval_every
    t.keep_checkpoints = t.num_steps // t.eval_every + 1
    return config


def model_run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The 'pretrain' config of one of the two models: everything but the other model."""
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.recipe = "pretrain"
    sub.model = config[f"{name}_model"]
    del sub["moe_model"], sub["dense_model"], sub["max_flops_gap"]
    return sub


# ----------------------------------------------------------------------------------------------
# Cost curves.


def training_seconds(rows: list[dict], interrupted: set[int]) -> dict[int, float]:
    """Cumulative training seconds after each step, from the steps' measured `step_seconds`.

    Step 1 (compilation) counts 0. The steps in `interrupted` (those right after an evaluation
    or a checkpoint, whose time includes that work) count the median of the other steps.
    """
    times = {r["step"]: r["step_seconds"] for r in rows if "step_seconds" in r}
    clean = [s for step, s in times.items() if step > 1 and step not in interrupted]
    median = float(np.median(clean)) if clean else 0.0
    total, out = 0.0, {}
    for step in sorted(times):
        if step > 1:
            total += median if step in interrupted else times[step]
        out[step] = total
    return out


def cost_curve(
    rows: list[dict], extra: dict[int, dict], flops_per_step: float, eval_every: int
) -> list[dict]:
    """One point per evaluation step: step, flops, seconds and the validation metrics (those of
    metrics.jsonl and `extra[step]`)."""
    evals = {r["step"]: r for r in rows if "val_loss" in r}
    steps = sorted(set(evals) | set(extra))
    interrupted = {s + 1 for s in steps} | {
        s + 1 for s in range(eval_every, max(steps, default=0), eval_every)
    }
    seconds = training_seconds(rows, interrupted)
    points = []
    for step in steps:
        point = {"step": step, "flops": step * flops_per_step, "seconds": seconds.get(step)}
        point.update({k: v for k, v in evals.get(step, {}).items() if k.startswith("val_")})
        point.update(extra.get(step, {}))
        points.append(point)
    return points


def cost_to_reach(curve: list[dict], key: str, target: float, cost: str) -> float | None:
    """The `cost` ('flops' or 'seconds') at which `curve[key]` first falls to `target`, linearly
    interpolated between the two evaluations around the crossing (the first point's cost if
    it is already there); None if it never does."""
    points = [p for p in curve if p.get(key) is not None and p.get(cost) is not None]
    previous = None
    for p in points:
        if p[key] <= target:
            if previous is None or previous[key] == p[key]:
                return float(p[cost])
            w = (previous[key] - target) / (previous[key] - p[key])
            return float(previous[cost] + w * (p[cost] - previous[cost]))
        previous = p
    return None


def trailing_mean(curve: list[dict], key: str, window: int) -> list[dict]:
    """The curve with `key` replaced by its mean over the last `window` evaluations (fewer at
    the start): at a constant learning rate the validation loss of a single evaluation moves up
    and down by more than the models differ late in training, so the final loss of one
    evaluation is a noisy target; both curves are smoothed alike (the lag is the same)."""
    values = [p.get(key) for p in curve]
    out = []
    for i, p in enumerate(curve):
        recent = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append({**p, key: float(np.mean(recent)) if recent else None})
    return out


# ----------------------------------------------------------------------------------------------
# The recipe.

SMOOTH_WINDOW = 4  # evaluations in the trailing mean of the smoothed ratio (trailing_mean)


def summarize(models: dict, runs: dict, curves: dict, key: str, seq_len: int) -> dict:
    """The per-seed row (plain scalars) and the per-model details."""
    final = {name: curves[name][-1] if curves[name] else {} for name in NAMES}
    target = final["dense"].get(key)
    row = {"loss_key": key}
    for name in NAMES:
        row[f"{name}_val_loss"] = final[name].get(key)
        row[f"{name}_val_loss_all_tokens"] = final[name].get("val_loss")
        row[f"{name}_flops_per_token"] = counting.flops_per_token(models[name], seq_len)
        row[f"{name}_train_flops"] = final[name].get("flops")
        row[f"{name}_train_seconds"] = final[name].get("seconds")
    for cost in ("flops", "seconds"):
        reach = None if target is None else cost_to_reach(curves["moe"], key, target, cost)
        total = final["dense"].get(cost)
        row[f"moe_{cost}_to_match"] = reach
        ratio = None if reach is None or not total else reach / total
        row[f"{'flops' if cost == 'flops' else 'wall'}_ratio_to_match"] = ratio
    # The same with both curves smoothed (trailing_mean): robust to one noisy final evaluation.
    smooth = {name: trailing_mean(curves[name], key, SMOOTH_WINDOW) for name in NAMES}
    target = smooth["dense"][-1].get(key) if smooth["dense"] else None
    row["dense_val_loss_smoothed"] = target
    reach = None if target is None else cost_to_reach(smooth["moe"], key, target, "flops")
    total = final["dense"].get("flops")
    row["flops_ratio_to_match_smoothed"] = None if reach is None or not total else reach / total
    dense_s, moe_s = row["dense_train_seconds"], row["moe_train_seconds"]
    row["seconds_per_flop_ratio"] = (
        None
        if not (dense_s and moe_s)
        else (moe_s / row["moe_train_flops"]) / (dense_s / row["dense_train_flops"])
    )
    row["models"] = {name: {**counting.param_counts(models[name]), **runs[name]} for name in NAMES}
    return row


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def comparison_table(result: dict) -> str:
    """Markdown: a row per model, then the FLOPs and seconds the MoE needs to match."""
    key = result["loss_key"]
    rows = [
        f"| model | params | activated params | FLOPs/token | train FLOPs | train s | tokens/s "
        f"| {key} | val_loss (all tokens) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in NAMES:
        m = result["models"][name]
        rows.append(
            f"| {name} | {m['total']:,} | {m['activated']:,} "
            f"| {result[f'{name}_flops_per_token']:.4g} "
            f"| {_fmt(result[f'{name}_train_flops'], '.3g')} "
            f"| {_fmt(result[f'{name}_train_seconds'], '.0f')} "
            f"| {_fmt(m.get('tokens_per_s'), ',.0f')} "
            f"| {_fmt(result[f'{name}_val_loss'], '.4f')} "
            f"| {_fmt(result[f'{name}_val_loss_all_tokens'], '.4f')} |"
        )
    target = _fmt(result["dense_val_loss"], ".4f")
    rows.append("")
    if result["flops_ratio_to_match"] is None:
        rows.append(f"The MoE does not reach the dense model's final {key} {target}.")
    else:
        rows.append(
            f"The MoE reaches the dense model's final {key} {target} with "
            f"{result['moe_flops_to_match']:.3g} training FLOPs = "
            f"{result['flops_ratio_to_match']:.2f}x the dense model's, in "
            f"{_fmt(result['moe_seconds_to_match'], '.0f')} s = "
            f"{_fmt(result['wall_ratio_to_match'], '.2f')}x its training seconds "
            f"(the MoE's seconds per FLOP: {_fmt(result['seconds_per_flop_ratio'], '.2f')}x "
            "the dense model's)."
        )
    smoothed = result.get("flops_ratio_to_match_smoothed")
    if result.get("dense_val_loss_smoothed") is not None:
        rows.append(
            f"With both curves averaged over their last {SMOOTH_WINDOW} evaluations "
            f"(dense final {result['dense_val_loss_smoothed']:.4f}): "
            + ("not reached." if smoothed is None else f"{smoothed:.2f}x the dense FLOPs.")
        )
    return "\n".join(rows)
