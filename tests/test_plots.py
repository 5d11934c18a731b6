"""The figures of moe_rl.plots from synthetic metrics rows: each writes a PNG, or returns None
when there is nothing to draw."""

import json
import os

import numpy as np
import pytest

from moe_rl import plots
from moe_rl.train import grpo, lm

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def lm_rows(steps=30, layers=2, experts=4, bias_rate=1e-3):
    rng = np.random.default_rng(0)
    rows = []
    bias = np.zeros((layers, experts))
    for s in range(1, steps + 1):
        load = rng.dirichlet(np.ones(experts), size=layers)
        bias += bias_rate * np.sign(load.mean(-1, keepdims=True) - load)
        rows.append(
            {
                "step": s,
                "loss": 5.0 / s,
                "ce": 4.0 / s,
                "load_imbalance": float((load.max(-1) / load.mean(-1)).mean()),
                "expert_load": load.tolist(),
                "routing_bias": bias.tolist(),
            }
        )
    rows.append({"step": steps, "val_loss": 0.5})
    return rows


def test_curves_runs_and_training_plots(tmp_path):
    rows = lm_rows()
    path = plots.plot_curves(rows, ["loss", "val_loss", "missing"], str(tmp_path / "c.png"))
    assert is_png(path)
    runs = {"moe": rows, "dense": lm_rows(bias_rate=0)}
    assert is_png(plots.plot_runs(runs, ["ce", "val_loss"], str(tmp_path / "r.png"), "t"))
    assert is_png(plots.plot_expert_load(rows, str(tmp_path / "load.png")))
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    names = sorted(p.rsplit("/", 1)[1] for p in plots.plot_training(str(tmp_path)))
    assert names == ["balance.png", "expert_load.png", "loss.png"]


def test_balance_shows_the_bias_of_the_run_whose_bias_moved(tmp_path):
    runs = {"bias off": lm_rows(bias_rate=0), "bias on": lm_rows()}
    assert is_png(plots.plot_balance(runs, str(tmp_path / "b.png")))
    # Without any bias movement only the imbalance panel is drawn.
    assert is_png(plots.plot_balance({"off": lm_rows(bias_rate=0)}, str(tmp_path / "o.png")))


def test_grpo_and_distill_figures(tmp_path):
    rows = [
        {"step": s, "reward": s / 10, "accuracy": s / 20, "format": 1.0, "response_length": 40 + s}
        for s in range(1, 11)
    ]
    assert is_png(plots.plot_grpo(rows, str(tmp_path / "g.png"), "GRPO"))
    results = {
        name: {"pass@1": p, "tokens_per_s": t, "format_rate": 1.0}
        for name, p, t in (
            ("teacher", 0.8, 2900.0),
            ("student base", 0.01, 2200.0),
            ("student", 0.79, 6400.0),
        )
    }
    params = {n: {"total": 10, "activated": a} for n, a in zip(results, (160, 49, 49), strict=True)}
    summary = {"results": results, "params": params}
    assert is_png(plots.plot_distill(summary, str(tmp_path / "d.png")))
    with open(tmp_path / "summary.json", "w") as f:
        json.dump(summary, f)
    assert is_png(plots.plot_distill(str(tmp_path), str(tmp_path / "d2.png")))


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: plots.plot_curves([], ["loss"], p),
        lambda p: plots.plot_curves([{"step": 1, "other": 1.0}], ["loss"], p),
        lambda p: plots.plot_runs({"a": [], "b": []}, ["loss"], p),
        lambda p: plots.plot_expert_load([{"step": 1, "loss": 1.0}], p),
        lambda p: plots.plot_balance({"a": []}, p),
        lambda p: plots.plot_grpo([], p),
        lambda p: plots.plot_distill({"results": {}}, p),
        lambda p: plots.plot_distill("/nonexistent/workdir", p),
    ],
)
def test_nothing_to_draw_is_none_and_writes_nothing(tmp_path, draw):
    path = str(tmp_path / "x.png")
    assert draw(path) is None
    assert not (tmp_path / "x.png").exists()


def test_plot_training_of_an_empty_workdir_is_empty(tmp_path):
    assert plots.plot_training(str(tmp_path)) == []


def test_first_and_last_samples(tmp_path):
    assert "no samples" in grpo.first_and_last_samples(str(tmp_path))
    blocks = [
        (step, f"=== step {step} | question: q{i} | reference: 1 | reward 0.00\n<think> {step}")
        for step in (1, 5, 10)
        for i in range(3)
    ]
    # A completion imitating a header inside a line is not a header.
    blocks.append((10, "=== step 10 | question: q | reference: 1\nsay === step 3 | x"))
    (tmp_path / "samples.txt").write_text("".join(b + "\n\n" for _, b in blocks))
    by_step = grpo.samples_by_step(str(tmp_path))
    assert sorted(by_step) == [1, 5, 10] and len(by_step[10]) == 4
    text = grpo.first_and_last_samples(str(tmp_path), n=2)
    assert text.count("=== step 1 |") == 2 and text.count("=== step 10 |") == 2
    assert "=== step 5 |" not in text


def test_routing_bias_is_layers_by_experts(tiny):
    cfg, _, state = tiny
    assert lm.routing_bias(state).shape == (cfg.num_moe_layers, cfg.n_routed_experts)


def test_smoothing_does_not_lag_and_axes_say_their_units(tmp_path):
    ramp = np.arange(200, dtype=float)
    smooth = plots._smooth(ramp + np.where(np.arange(200) % 2, 1.0, -1.0))  # noisy ramp
    np.testing.assert_allclose(smooth[10:-10], ramp[10:-10], atol=0.2)  # centred: no lag
    assert plots._smooth(ramp[:30]) is not None and len(plots._smooth(ramp[:30])) == 30
    rows = [{"step": s, "loss": 1.0 / (s + 1), "response_length": 40.0 + s} for s in range(50)]
    path = plots.plot_curves(rows, ["loss", "response_length"], str(tmp_path / "c.png"))
    assert path and os.path.exists(path)
    assert plots.UNITS["loss"] == "nats / token" and plots.UNITS["response_length"] == "tokens"
