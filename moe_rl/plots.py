"""Figures drawn from a workdir's metrics.jsonl; used by the CLI at the end of a run and by the
notebooks."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moe_rl.train.loop import read_metrics  # noqa: E402


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if key in r and np.ndim(r[key]) == 0]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps), np.asarray(values, dtype=float)


def plot_curves(rows: list[dict], keys: list[str], path: str, title: str = "") -> str | None:
    """One panel per metric key over steps; returns the PNG path (None if nothing to draw)."""
    keys = [k for k in keys if _series(rows, k)[0].size]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        steps, values = _series(rows, key)
        ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_expert_load(rows: list[dict], path: str) -> str | None:
    """Heatmap per MoE layer: share of routed tokens per expert (rows) over training steps."""
    pts = [(r["step"], np.asarray(r["expert_load"])) for r in rows if "expert_load" in r]
    if not pts:
        return None
    steps = [s for s, _ in pts]
    load_SLE = np.stack([x for _, x in pts])
    n_layers, n_experts = load_SLE.shape[1:]
    fig, axes = plt.subplots(1, n_layers, figsize=(4 * n_layers, 3), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        im = ax.imshow(
            load_SLE[:, layer].T * n_experts,  # 1.0 = a fair share
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0,
            vmax=max(2.0, float(load_SLE.max() * n_experts)),
            extent=(steps[0], steps[-1], -0.5, n_experts - 0.5),
        )
        ax.set_title(f"MoE layer {layer}: load / fair share")
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training(workdir: str) -> list[str]:
    """The loss curves and the expert-load heatmap of a pretraining/SFT run."""
    rows = read_metrics(workdir)
    paths = [
        plot_curves(
            rows, ["loss", "ce", "val_loss", "load_imbalance"], os.path.join(workdir, "loss.png")
        ),
        plot_expert_load(rows, os.path.join(workdir, "expert_load.png")),
    ]
    return [p for p in paths if p]
