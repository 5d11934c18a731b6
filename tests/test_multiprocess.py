"""Multi-host pretraining with JAX's own runtime: 2 processes on localhost, 4 fake CPU devices
each, `jax.distributed` with gloo collectives. The expert axis spans both processes (mesh
expert=8: the experts' all-gather / reduce-scatter cross processes); the losses equal a
single-process single-device run, both processes save one checkpoint and a second invocation
resumes from it."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

from moe_rl.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 400  # seconds per invocation (a 2-process run takes ~1-2 min on 2 busy cores)
MESH = "expert=8"


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} --xla_llvm_disable_expensive_passes=true"
    )
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _worker(*args) -> list[str]:
    return [sys.executable, "-m", "tests.multiprocess.worker", *args]


def run_processes(workdir, steps: int, logs, n: int = 2) -> list[list[dict]]:
    """Runs the n workers to `steps`; returns each one's JSON lines. On a failure or timeout
    all of them are killed and the assertion shows each one's stderr tail."""
    port, procs = _free_port(), []
    os.makedirs(logs, exist_ok=True)
    for i in range(n):
        out = open(os.path.join(logs, f"p{i}.out"), "w")  # noqa: SIM115 - closed below
        err = open(os.path.join(logs, f"p{i}.err"), "w")  # noqa: SIM115 - closed below
        args = [f"--process_id={i}", f"--num_processes={n}", f"--port={port}"]
        args += [f"--workdir={workdir}", f"--steps={steps}", f"--mesh={MESH}"]
        proc = subprocess.Popen(_worker(*args), cwd=ROOT, env=_env(4), stdout=out, stderr=err)
        procs.append((proc, out, err))
    deadline = time.monotonic() + TIMEOUT
    try:  # poll: one process failing ends the wait (its peer may hang in a collective)
        while time.monotonic() < deadline:
            codes = [proc.poll() for proc, _, _ in procs]
            if any(codes) or None not in codes:
                break
            time.sleep(1)
    finally:
        for proc, out, err in procs:
            if proc.poll() is None:  # still running: a failed peer or the timeout
                proc.kill()
                proc.wait()
            out.close()
            err.close()
    codes = [proc.returncode for proc, _, _ in procs]
    timed_out = time.monotonic() >= deadline
    failed = f"timed out after {TIMEOUT}s" if timed_out else f"return codes {codes}"
    read = lambda name: pathlib.Path(logs, name).read_text()
    if any(codes):
        tails = "\n".join(
            f"--- process {i} stderr ---\n{read(f'p{i}.err')[-3000:]}" for i in range(n)
        )
        raise AssertionError(f"{n}-process run to step {steps} {failed}\n{tails}")
    return [_json_lines(read(f"p{i}.out")) for i in range(n)]


def test_pretraining_across_two_processes_with_expert_parallelism(tmp_path):
    # Reference first (it also prepares the corpus, so the workers do not race to build it):
    # one process, one device, no mesh, 3 uninterrupted steps.
    ref = subprocess.run(
        _worker(f"--workdir={tmp_path / 'ref'}", "--steps=3", "--mesh=data=1"),
        cwd=ROOT,
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]

    workdir = tmp_path / "mp"
    first = run_processes(workdir, 2, tmp_path / "logs_2")
    for i, lines in enumerate(first):
        topology = lines[0]
        assert topology["process"] == i and topology["processes"] == 2, topology
        assert topology["devices"] == 8 and topology["local_devices"] == 4, topology
        assert topology["expert_group_processes"] == [[0, 1]], topology  # EP spans processes
    assert os.path.isdir(workdir / "checkpoints" / "2")
    second = run_processes(workdir, 3, tmp_path / "logs_3")  # resumes at step 2

    # Every process computed the same (replicated) final loss.
    finals = [lines[-1] for lines in second]
    assert finals[0] == finals[1] and finals[0]["steps"] == 3, finals

    # metrics.jsonl: written once (process 0 only) and step 1-2 not redone on resume.
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 3]

    losses = lambda wd, key: [r[key] for r in loop.read_metrics(str(wd)) if key in r]
    np.testing.assert_allclose(losses(workdir, "loss"), losses(tmp_path / "ref", "loss"), rtol=2e-5)
    # Validation at the end (the resumed run also evaluated at its stop, step 2).
    np.testing.assert_allclose(
        losses(workdir, "val_loss")[-1], losses(tmp_path / "ref", "val_loss")[-1], rtol=2e-5
    )

    # Each checkpoint holds both processes' shards (Orbax's OCDBT writes one folder per
    # process); the process-0 files (summary, plots, TensorBoard) exist once.
    for step in (2, 3):
        state = workdir / "checkpoints" / str(step) / "state"
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state)), step
    assert (workdir / "summary.json").exists() and (workdir / "loss.png").exists()
    assert len(os.listdir(workdir / "tensorboard")) == 2  # one event file per invocation
