"""The command line: config files, overrides, recipe dispatch and clear errors."""

import json
import os
import re
import subprocess
import sys

import pytest

from moe_rl import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ValueError, match="summary"):
        main.get_recipe("nope")


def test_cli_runs_summary_with_overrides(tmp_path):
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "moe_rl.main",
        "--config=experiments/tiny.py",
        "--config.model.num_hidden_layers=2",
        "--config.model.q_lora_rank=16",
        "--config.seq_len=16",
        f"--workdir={workdir}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "activated params" in out.stdout
    # The banner names the recipe, the config file with its overrides, the workdir and devices;
    # the last line the files written.
    assert "moe_rl: recipe summary from experiments/tiny.py with " in out.stdout
    assert "--config.model.num_hidden_layers=2" in out.stdout.split("\n")[0]
    assert f"workdir: {workdir}" in out.stdout and "devices: 1 x " in out.stdout
    assert f"Done. Files in {workdir}: " in out.stdout and "summary.json" in out.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["total"] == summary["params_in_tree"]


def test_cli_bad_model_value_fails_before_compiling(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "moe_rl.main",
        "--config=experiments/tiny.py",
        "--config.model.n_routed_experts=6",
        f"--workdir={tmp_path}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "n_routed_experts=6 is not divisible by model.n_group=4" in out.stderr
    # the message and a hint, no traceback; --traceback shows it
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("moe_rl: ") for line in lines), out.stderr
    out = subprocess.run(
        cmd + ["--traceback"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode != 0 and "Traceback (most recent call last)" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=experiments/nope.py"], r"--config=experiments/nope.py: no such file \("),
        (
            ["--config=experiments/tiny.py", "--config.modle.x=1"],
            r"--config.modle.x: config has no field 'modle'; did you mean 'model'\?",
        ),
        (
            ["--config=experiments/tiny.py", "--config.model.hidden_size=abc"],
            r"--config.model.hidden_size=abc: invalid literal",
        ),
    ],
)
def test_cli_config_mistakes_are_one_line(args, message):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "moe_rl.main", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moe_rl: "), out.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]


def test_help_lists_recipes_and_experiments():
    cmd = [sys.executable, "-m", "moe_rl.main", "--help"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Recipes (config.recipe): " in out.stdout and "r1_zero" in out.stdout
    assert "experiments/r1_zero.py" in out.stdout and "experiments/moe_vs_dense.py" in out.stdout


def test_cli_fills_the_seed_into_paths_of_a_single_run(tmp_path):
    """'{seed}' in a config path is config.seed without --seeds too: the bf16 experiment of
    seed 7 looks for seed 7's base (absent here: the error names it)."""
    cmd = [
        sys.executable,
        "-m",
        "moe_rl.main",
        "--config=experiments/r1_zero_bf16.py:plain",
        "--config.seed=7",
        f"--workdir={tmp_path}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "config.init_checkpoint='runs/r1_zero/seed_7/base'" in out.stderr, out.stderr[-2000:]
