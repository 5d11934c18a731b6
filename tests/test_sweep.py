"""--seeds: seed parsing, per-seed rows with mean/std/min against numpy, resume of finished
seeds, a changed config reruns, errors naming the flag; and the CLI on a fast recipe."""

import json
import os
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest

from moe_rl import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_seeds():
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("3") == [3]
    assert sweep.parse_seeds("0,2, 7") == [0, 2, 7]
    assert sweep.parse_seeds("0-1,5") == [0, 1, 5]
    for bad in ("", "a", "4-2", "-1", "1,1", "0-"):
        with pytest.raises(ValueError, match="--seeds"):
            sweep.parse_seeds(bad)


def _fake_recipe(calls: list):
    """A recipe whose result depends on the seed and which writes a metrics.jsonl curve."""

    def run(config, workdir):
        calls.append((config.seed, workdir))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in range(1, 6):
                f.write(json.dumps({"step": step, "accuracy": config.seed * 0.1 + step}) + "\n")
        return {"score": 0.5 + 0.1 * config.seed, "steps": 5, "done": True, "nested": {"a": 1}}

    return types.SimpleNamespace(run=run, SEED_CURVES=("accuracy",))


def _config(lr=1.0):
    return ml_collections.ConfigDict(dict(name="fake", recipe="fake", seed=0, lr=lr))


def test_rows_stats_resume_and_rerun_on_change(tmp_path):
    calls = []
    recipe = _fake_recipe(calls)
    out = sweep.run(_config(), str(tmp_path), [0, 1, 3], recipe)
    assert [c[0] for c in calls] == [0, 1, 3]
    assert calls[2][1] == str(tmp_path / "seed_3")
    scores = np.array([0.5, 0.6, 0.8])
    assert [out["rows"][s]["score"] for s in (0, 1, 3)] == pytest.approx(scores)
    assert "done" not in out["rows"][0] and "nested" not in out["rows"][0]  # scalars only
    st = out["stats"]["score"]
    assert st["mean"] == pytest.approx(scores.mean())
    assert st["std"] == pytest.approx(scores.std(ddof=1))
    assert st["min"] == pytest.approx(0.5) and st["max"] == pytest.approx(0.8)
    md = (tmp_path / "seeds.md").read_text()
    assert "| **mean** |" in md and "| **min** |" in md and "| 3 |" in md
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["rows"]["1"]["score"] == pytest.approx(0.6)
    assert out["plot"] and os.path.exists(out["plot"])

    # Finished seeds are not run again; a new seed is.
    again = sweep.run(_config(), str(tmp_path), [0, 1, 3, 4], recipe)
    assert [c[0] for c in calls[3:]] == [4]
    assert again["rows"][3] == out["rows"][3]
    # A different config (any value) reruns the seed.
    sweep.run(_config(lr=2.0), str(tmp_path), [0], recipe)
    assert [c[0] for c in calls[4:]] == [0]


def test_recipe_row_function_is_used(tmp_path):
    recipe = types.SimpleNamespace(
        run=lambda config, workdir: {"x": config.seed},
        seed_row=lambda result: {"twice x": 2.0 * result["x"]},
    )
    out = sweep.run(_config(), str(tmp_path), [1, 2], recipe)
    assert out["stats"]["twice x"]["mean"] == pytest.approx(3.0)
    assert set(out["rows"][1]) == {"twice x", "minutes"}
    assert out["plot"] is None  # no curves named


def test_seed_placeholder_in_strings():
    config = ml_collections.ConfigDict(
        dict(seed=0, teacher_workdir="runs/r1_zero/seed_{seed}", block=dict(path="a{seed}b", n=3))
    )
    out = sweep.seed_config(config, 4)
    assert out.seed == 4 and out.teacher_workdir == "runs/r1_zero/seed_4"
    assert out.block.path == "a4b" and out.block.n == 3
    assert config.teacher_workdir == "runs/r1_zero/seed_{seed}"  # the original is unchanged


def test_config_without_seed_is_an_error(tmp_path):
    recipe = types.SimpleNamespace(run=lambda c, w: {})
    with pytest.raises(ValueError, match="config.seed"):
        sweep.run(ml_collections.ConfigDict(dict(recipe="x")), str(tmp_path), [0], recipe)


def test_grpo_seed_row():
    from moe_rl.recipes import r1_zero

    m = lambda p, f, n: {"pass@1": p, "format_rate": f, "mean_length": n}
    row = r1_zero.seed_row({"before": m(0.1, 0.9, 30.0), "after": m(0.7, 1.0, 60.0)})
    assert row["gain"] == pytest.approx(0.6)
    assert row["format"] == 1.0 and row["base length"] == 30.0 and row["length"] == 60.0


def test_cli_seeds(tmp_path):
    """Two seeds of the (fast) summary recipe through the command line, then a bad flag."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "moe_rl.main",
        "--config=experiments/tiny.py",
        "--config.model.num_hidden_layers=2",
        "--config.seq_len=16",
        f"--workdir={tmp_path}",
    ]
    out = subprocess.run(
        [*cmd, "--seeds=0-1"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| **std** |" in out.stdout
    assert (tmp_path / "seed_0" / "summary.json").exists()
    assert (tmp_path / "seed_1" / sweep.RESULT_FILE).exists()
    rows = json.loads((tmp_path / "seeds.json").read_text())["rows"]
    assert set(rows) == {"0", "1"} and rows["0"]["total"] > 0
    bad = subprocess.run(
        [*cmd, "--seeds=2-1"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert bad.returncode != 0 and "--seeds='2-1'" in bad.stderr
