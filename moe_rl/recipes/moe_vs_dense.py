"""Recipe 'moe_vs_dense': pretrain an MoE and a dense model on the same tokens and compare.

DeepSeekMoE's claim at laptop scale: at equal *activated* FLOPs per token, an MoE of many
fine-grained routed experts plus shared experts, with several times the total parameters,
learns more per training FLOP. Both models are trained by the pretraining recipe
(`recipes.pretrain.run`) with identical data, train and optim blocks (same seed: same initial
data order), each into `<workdir>/<moe|dense>`.

What is measured, per model, at every evaluation step (`train.eval_every`):
- training FLOPs: steps x batch_size x seq_len x `counting.flops_per_token` (padding
  positions included: they are computed);
- training seconds: the measured step times of metrics.jsonl, step 1 (compilation) left out
  and a step that follows an evaluation or a checkpoint (whose time holds that work too)
  counted at the median step time;
- `val_loss`: the pretraining's next-token loss on every token of the validation documents;
- on a labelled corpus (`moe_rl.data.labelled`: the skills or the facts corpus),
  `val_value_loss`: the loss on the tokens of its measured kinds only (coded letters of held-out
  entries of the same skills; attribute values of held-out renderings of the same people),
  evaluated from the checkpoint of each evaluation step, overall and per kind.
Then: the FLOPs (and seconds) the MoE needs to reach the dense model's final loss, linearly
interpolated between evaluations, and their ratios to the dense model's (the FLOPs ratio also
with both curves averaged over their last `compare.SMOOTH_WINDOW` evaluations, so that one noisy
final evaluation does not decide it); and, from the MoE's
final checkpoint, which experts the positions predicting each kind (each skill's coded
letters, each attribute, the rest) are routed to in each MoE layer (`routing_shares`).
Re-running a finished comparison trains nothing and writes the same results.
"""

from __future__ import annotations

import json
import os
import resource
import time

import ml_collections
import numpy as np

from moe_rl import plots
from moe_rl.data import corpus
from moe_rl.metrics import read_metrics
from moe_rl.models import counting
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import pretrain
from moe_rl.train import loop, probes
from moe_rl.train.compare import (
    NAMES,
    comparison_table,
    cost_curve,
    model_run_config,
    prepare,
    summarize,
)


def train(sub: ml_collections.ConfigDict, workdir: str) -> dict:
    """pretrain.run unless this model's run is complete; returns its summary plus the machine load
    (1-minute load average before and after), the process CPU seconds and wall seconds of the
    call, kept in run_info.json. A complete run is not called again (pretrain.run would train no
    step and write a summary of nothing): its files are read back."""
    info_path = os.path.join(workdir, "run_info.json")
    summary = loop.finished_summary(workdir, sub.train.num_steps)
    if summary is not None:
        info = {}
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
        return {**summary, **info}
    cpu = lambda: resource.getrusage(resource.RUSAGE_SELF)
    before, start, load = cpu(), time.perf_counter(), os.getloadavg()[0]
    summary = pretrain.run(sub, workdir)
    after = cpu()
    info = {
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "process_cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "call_seconds": time.perf_counter() - start,
    }
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return {**{k: v for k, v in summary.items() if k != "plots"}, **info}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.moe_model and config.dense_model (same data, train, optim blocks), then
    writes comparison.json, comparison.md, comparison.png (loss vs FLOPs and vs seconds) and
    specialisation.png. Returns the comparison: plain scalars at the top level (a per-seed
    row), the details under 'models', 'curves' and 'specialisation'."""
    config = prepare(config)
    models = {name: ModelConfig.from_config(config[f"{name}_model"]) for name in NAMES}
    t = config.train
    runs = {
        name: train(model_run_config(config, name), os.path.join(workdir, name)) for name in NAMES
    }
    labels = corpus.is_labelled(config.data.name)
    batch = kinds = None
    if labels:
        docs = corpus.load_labelled(config.data.name, "validation", config.data.data_dir or None)
        kinds, measured = docs.kinds, docs.measured
        batch = probes.document_batch(docs.__getitems__(list(range(len(docs)))), len(kinds) - 1)
    curves = {}
    for name, m in models.items():
        folder = os.path.join(workdir, name)
        extra = probes.value_curve(m, folder, batch, kinds, measured) if labels else {}
        per_step = t.batch_size * t.seq_len * counting.flops_per_token(m, t.seq_len)
        curves[name] = cost_curve(read_metrics(folder), extra, per_step, t.eval_every)
    key = "val_value_loss" if labels else "val_loss"
    result = summarize(models, runs, curves, key, t.seq_len)
    result["curves"] = curves
    if labels:
        result["specialisation"] = probes.specialisation(
            models["moe"], os.path.join(workdir, "moe"), curves["moe"][-1]["step"], batch, kinds
        )
    table = comparison_table(result)
    print(table)
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(table + "\n")
    plots.plot_cost_curves(
        curves,
        [key, "val_loss"] if labels else ["val_loss"],
        os.path.join(workdir, "comparison.png"),
        target={key: result["dense_val_loss"]},
        title="MoE vs dense at equal activated FLOPs per token",
    )
    if labels:
        spec = result["specialisation"]
        plots.plot_expert_shares(
            spec["shares"], spec["kinds"], os.path.join(workdir, "specialisation.png")
        )
    return result


def seed_row(result: dict) -> dict[str, float]:
    """A seed's row for `main --seeds`: both models' final losses, the MoE's FLOPs and seconds to
    reach the dense model's final loss as ratios of the dense model's (inf: never reached; the
    FLOPs ratio also with both curves smoothed, `compare.trailing_mean`), and
    the routing's mutual information between token kind and expert (mean over MoE layers)."""
    inf = lambda v: float("inf") if v is None else float(v)
    row = {
        "moe loss": result["moe_val_loss"],
        "dense loss": result["dense_val_loss"],
        "FLOPs ratio": inf(result["flops_ratio_to_match"]),
        "FLOPs ratio (smoothed)": inf(result.get("flops_ratio_to_match_smoothed")),
        "seconds ratio": inf(result["wall_ratio_to_match"]),
        "moe s": result["moe_train_seconds"],
        "dense s": result["dense_train_seconds"],
    }
    spec = result.get("specialisation")
    if spec:
        row["I(kind;expert) bits"] = float(np.mean(spec["mutual_information_bits"]))
    return {k: float(v) for k, v in row.items() if v is not None}


STYLES = ("-", "--", ":", "-.")  # the seeds' line styles in seed_figure, in turn


def seed_figure(workdir: str, seeds: list[int]) -> str | None:
    """`main --seeds`' figure: every seed's MoE and dense loss against training FLOPs and
    seconds, read from <workdir>/seed_<n>/comparison.json."""
    curves, styles = {}, {}
    key = None
    for n, seed in enumerate(seeds):
        path = os.path.join(workdir, f"seed_{seed}", "comparison.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            result = json.load(f)
        key = result["loss_key"]
        for i, name in enumerate(NAMES):  # a colour per model, a line style per seed
            curves[f"{name} seed {seed}"] = result["curves"][name]
            styles[f"{name} seed {seed}"] = {"color": f"C{i}", "linestyle": STYLES[n % len(STYLES)]}
    if not curves:
        return None
    return plots.plot_cost_curves(
        curves,
        [key],
        os.path.join(workdir, "seeds.png"),
        styles=styles,
        title=f"MoE vs dense, {len(seeds)} seeds",
    )
