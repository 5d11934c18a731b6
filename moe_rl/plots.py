"""Figures drawn from a workdir's metrics.jsonl (or summary.json); used by the recipes at the end
of a run and by the Colab notebooks.

Each function takes metric rows or a workdir (read with `read_metrics`), writes one PNG and
returns its path, or None when the rows hold nothing to draw.
"""

from __future__ import annotations

import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moe_rl.metrics import read_metrics  # noqa: E402

Rows = list[dict]
GRPO_KEYS = ("reward", "accuracy", "format", "response_length", "kl", "entropy")


def _rows(rows_or_workdir: Rows | str) -> Rows:
    if isinstance(rows_or_workdir, str):
        return read_metrics(rows_or_workdir)
    return rows_or_workdir


def _series(rows: Rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if key in r and np.ndim(r[key]) == 0]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps), np.asarray(values, dtype=float)


def _smooth(values: np.ndarray) -> np.ndarray:
    """Centred moving average over ~1/20 of the run (noisy per-step metrics), the window
    shrinking at both ends: a trailing average would lag the curve by half its window. Short
    runs unchanged."""
    half = len(values) // 40
    if half < 1:
        return values
    csum = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(len(values))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


# y-axis labels: what each metric is, in which unit.
UNITS = {
    "loss": "nats / token",
    "ce": "nats / token",
    "val_loss": "nats / token",
    "mtp_ce": "nats / token",
    "val_ppl": "perplexity",
    "entropy": "nats / token",
    "kl": "nats / token",
    "reward": "mean reward",
    "accuracy": "fraction right",
    "sampled_accuracy": "fraction right",
    "format": "fraction well-formed",
    "response_length": "tokens",
    "tokens_per_s": "tokens / s",
    "step_seconds": "s",
    "mfu": "fraction of matmul peak",
    "grad_norm": "global L2 norm",
    "learning_rate": "lr",
    "load_imbalance": "max / mean expert load",
    "balance_loss": "loss",
}


def _plot_line(ax, steps, values, label=None, color=None):
    smooth = _smooth(values)
    if smooth is not values:  # raw values faint, the moving average on top
        ax.plot(steps, values, alpha=0.25, color=color, linewidth=0.8)
    ax.plot(steps, smooth, label=label, color=color)


def _panels(n: int, ncols: int):
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: str, title: str = "") -> str:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_curves(
    rows: Rows | str, keys: list[str], path: str, title: str = "", ncols: int = 4
) -> str | None:
    """One panel per metric key over steps (at most `ncols` per row)."""
    return plot_runs({"": rows}, keys, path, title, ncols)


def plot_runs(
    runs: dict[str, Rows | str], keys: list[str], path: str, title: str = "", ncols: int = 4
) -> str | None:
    """One panel per metric key, one line per run (e.g. MoE vs dense on the same tokens)."""
    runs = {name: _rows(r) for name, r in runs.items()}
    keys = [k for k in keys if any(_series(rows, k)[0].size for rows in runs.values())]
    if not keys:
        return None
    fig, axes = _panels(len(keys), ncols)
    for ax, key in zip(axes, keys, strict=True):
        for i, (name, rows) in enumerate(runs.items()):
            steps, values = _series(rows, key)
            if steps.size:
                _plot_line(ax, steps, values, label=name or None, color=f"C{i}")
        ax.set_xlabel("step")
        ax.set_ylabel(UNITS.get(key, key))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    return _save(fig, path, title)


def plot_expert_load(rows: Rows | str, path: str) -> str | None:
    """Heatmap per MoE layer: share of routed tokens per expert (rows) over training steps."""
    pts = [(r["step"], np.asarray(r["expert_load"])) for r in _rows(rows) if "expert_load" in r]
    if not pts:
        return None
    steps = [s for s, _ in pts]
    load_SLE = np.stack([x for _, x in pts])
    n_layers, n_experts = load_SLE.shape[1:]
    fig, axes = _panels(n_layers, 4)
    for layer, ax in enumerate(axes):
        im = ax.imshow(
            load_SLE[:, layer].T * n_experts,  # 1.0 = a fair share
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0,
            vmax=max(2.0, float(load_SLE.max() * n_experts)),
            extent=(steps[0], steps[-1], -0.5, n_experts - 0.5),
            interpolation="nearest",
        )
        ax.set_title(f"MoE layer {layer}: load / fair share")
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax, label="share / uniform share")
    return _save(fig, path)


def plot_balance(runs: dict[str, Rows | str], path: str) -> str | None:
    """The auxiliary-loss-free balancing at work: max/mean expert load per run over steps (1.0 =
    perfect balance), and the routing bias of every expert and layer of the first run whose
    bias moved (the bias rises for under-loaded experts and falls for over-loaded ones)."""
    runs = {name: _rows(r) for name, r in runs.items()}
    if not any(_series(rows, "load_imbalance")[0].size for rows in runs.values()):
        return None
    moved = None
    for name, rows in runs.items():
        bias = [(r["step"], np.asarray(r["routing_bias"])) for r in rows if "routing_bias" in r]
        if bias and np.any(np.stack([b for _, b in bias]) != 0):
            moved = name, bias
            break
    fig, axes = _panels(2 if moved else 1, 2)
    ax = axes[0]
    for i, (name, rows) in enumerate(runs.items()):
        steps, values = _series(rows, "load_imbalance")
        if steps.size:
            _plot_line(ax, steps, values, label=name or None, color=f"C{i}")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set(xlabel="step", ylabel="max / mean expert load", title="max expert load / mean load")
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend()
    if moved:
        name, bias = moved
        steps = np.asarray([s for s, _ in bias])
        bias_SLE = np.stack([b for _, b in bias])
        ax = axes[1]
        for layer in range(bias_SLE.shape[1]):
            for e in range(bias_SLE.shape[2]):
                ax.plot(
                    steps,
                    bias_SLE[:, layer, e],
                    color=f"C{layer}",
                    linewidth=0.8,
                    label=f"layer {layer}" if e == 0 else None,
                )
        ax.set(
            xlabel="step",
            ylabel="bias added to the routing score",
            title=f"routing bias per expert ({name})" if name else "routing bias",
        )
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_grpo(rows: Rows | str, path: str, title: str = "") -> str | None:
    """GRPO over steps: reward, accuracy, format rate, response length, KL and entropy."""
    return plot_curves(rows, list(GRPO_KEYS), path, title, ncols=3)


def plot_distill(summary: dict | str, path: str) -> str | None:
    """Bars of teacher vs student (base and distilled): held-out pass@1, sampling tokens/s and
    activated parameters, from a distill summary (or its workdir's summary.json)."""
    if isinstance(summary, str):
        file = os.path.join(summary, "summary.json")
        if not os.path.exists(file):
            return None
        with open(file) as f:
            summary = json.load(f)
    results = summary.get("results") or {}
    if not results:
        return None
    names = list(results)
    panels = [
        ("held-out pass@1", [results[n]["pass@1"] for n in names], "{:.2f}"),
        ("sampling tokens/s", [results[n]["tokens_per_s"] for n in names], "{:,.0f}"),
    ]
    params = summary.get("params")
    if params:
        panels.append(("activated params", [params[n]["activated"] for n in names], "{:,}"))
    fig, axes = _panels(len(panels), 3)
    for ax, (label, values, fmt) in zip(axes, panels, strict=True):
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, [fmt.format(v) for v in values])
        ax.set_title(label)
        ax.set_ylabel(label)
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def plot_training(workdir: str) -> list[str]:
    """The loss curves, the expert-load heatmap and the balancing of a pretraining/SFT run."""
    rows = read_metrics(workdir)
    paths = [
        plot_curves(
            rows, ["loss", "ce", "val_loss", "load_imbalance"], os.path.join(workdir, "loss.png")
        ),
        plot_expert_load(rows, os.path.join(workdir, "expert_load.png")),
        plot_balance({"": rows}, os.path.join(workdir, "balance.png")),
    ]
    return [p for p in paths if p]


def plot_cost_curves(
    curves: dict[str, Rows],
    keys: list[str],
    path: str,
    target: dict[str, float] | None = None,
    title: str = "",
    styles: dict[str, dict] | None = None,
) -> str | None:
    """Validation losses against training FLOPs and against training seconds, one line per
    model (e.g. MoE vs dense): a row of two panels per key. `curves[name]` are points with
    'flops', 'seconds' and the keys; `target[key]` draws a dashed level (the dense final);
    `styles[name]`: matplotlib line keywords (default: the name's own colour, dots)."""
    keys = [k for k in keys if any(p.get(k) is not None for c in curves.values() for p in c)]
    if not keys:
        return None
    fig, axes = _panels(2 * len(keys), 2)
    for row, key in enumerate(keys):
        for col, (cost, label) in enumerate(
            (("flops", "training FLOPs"), ("seconds", "training s"))
        ):
            ax = axes[2 * row + col]
            for i, (name, points) in enumerate(curves.items()):
                pts = [
                    (p[cost], p[key])
                    for p in points
                    if p.get(key) is not None and p.get(cost) is not None
                ]
                if pts:
                    x, y = zip(*pts, strict=True)
                    style = {"marker": ".", "color": f"C{i}", **(styles or {}).get(name, {})}
                    ax.plot(x, y, label=name, **style)
            if target and target.get(key) is not None:
                ax.axhline(target[key], color="gray", linestyle="--", linewidth=1)
            ax.set(xlabel=label, ylabel=UNITS.get(key, "nats / token"), title=key)
            ax.grid(alpha=0.3)
            ax.legend()
    return _save(fig, path, title)


def plot_expert_shares(
    shares: list | np.ndarray, kinds: list[str], path: str, title: str = ""
) -> str | None:
    """Heatmap per MoE layer: of the routed tokens of each kind (rows), the share each expert
    (columns) received, divided by the uniform share 1/E (1.0: no preference), log colour
    scale. shares[layer][kind][expert] as made by probes.routing_shares."""
    shares_NCE = np.asarray(shares, dtype=float)
    if shares_NCE.size == 0:
        return None
    from matplotlib.colors import LogNorm

    n_layers, n_kinds, n_experts = shares_NCE.shape
    ratio = np.clip(shares_NCE * n_experts, 1e-2, None)
    top = max(float(ratio.max()), 2.0)
    fig, axes = plt.subplots(
        n_layers,
        1,
        figsize=(max(6, 0.22 * n_experts + 2), 0.45 * n_kinds * n_layers + 1.2),
        squeeze=False,
    )
    for layer, ax in enumerate(axes[:, 0]):
        im = ax.imshow(
            ratio[layer],
            aspect="auto",
            cmap="RdBu_r",
            norm=LogNorm(1 / top, top),
            interpolation="nearest",
        )
        ax.set_yticks(range(n_kinds), kinds)
        ax.set_xticks(range(0, n_experts, max(1, n_experts // 16)))
        ax.set_title(f"MoE layer {layer}: share of a kind's tokens per expert / uniform (1/E)")
        ax.set_xlabel("routed expert")
        fig.colorbar(im, ax=ax, label="share / uniform share")
    return _save(fig, path, title)
