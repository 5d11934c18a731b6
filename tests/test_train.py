"""The LM recipe: golden first step, learning, losses against hand computations, balancing,
gradient accumulation, config errors, the NaN guard, and kill-and-resume through the CLI.

In-process tests use a 2-layer tiny MoE (1 dense + 1 MoE layer + MTP) on [4, 32] batches and
share three compiled functions (train step with grad_accum 1 and 2, forward+loss). The CLI
runs share a persistent compilation cache, so only the first one compiles.
"""

import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import time
import types
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe_rl.checkpoint import Checkpointer
from moe_rl.data import packing, tokenizers
from moe_rl.models import moe, transformer
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import pretrain
from moe_rl.train import configs, lm, loop, train_state
from tests.utils import make_config, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, L = 4, 32


def as_batch(tokens, segment_ids=None, positions=None, loss_mask=None) -> dict:
    """A [B, L] batch dict; defaults: one document per row, no padding."""
    tokens = jnp.asarray(tokens, jnp.int32)
    seg = jnp.ones_like(tokens) if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    batch = {"tokens": tokens, "positions": jnp.asarray(positions, jnp.int32), "segment_ids": seg}
    if loss_mask is not None:
        batch["loss_mask"] = jnp.asarray(loss_mask, jnp.int32)
    return batch


def micro(batch: dict, accum: int = 1) -> dict:
    """[B, L] -> [accum, B / accum, L], the layout the train step takes."""
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in batch.items()}


@pytest.fixture(scope="module")
def setup():
    """cfg, tx, loss config, the seed-0 initial state and the jitted train step."""
    cfg = make_config("tiny", num_hidden_layers=2)
    # No warmup, so step 1 already moves the weights; Adam's eps raised from 1e-8 so that
    # weights with a near-zero first gradient (update ~ lr * g / (|g| + eps)) do not turn
    # float32 rounding noise into lr-sized differences (see test_grad_accumulation...).
    tx = train_state.make_optimizer(configs.optim(warmup_steps=0, eps=1e-6), num_steps=30)
    lc = lm.LossConfig()
    state = train_state.init(cfg, tx, seed=0)
    step = jax.jit(lm.make_train_step(cfg, lc, tx, bias_rate=1e-3))
    return types.SimpleNamespace(cfg=cfg, tx=tx, lc=lc, state=state, step=step)


@pytest.fixture(scope="module")
def forward_and_loss(setup):
    """(params, model_state, batch with loss_mask) -> (lm_loss metrics, logits, aux), jitted."""
    cfg, lc = setup.cfg, setup.lc

    @jax.jit
    def fn(params, model_state, batch):
        _, (metrics, _) = lm.lm_loss(params, model_state, batch, cfg, lc)
        logits, _, aux = transformer.forward(
            cfg, params, model_state, batch["tokens"], batch["positions"], batch["segment_ids"]
        )
        return metrics, logits, aux

    return fn


def golden_batch(cfg) -> dict:
    tokens, _ = random_batch(cfg, batch=B, length=L, seed=1)
    return as_batch(tokens)


# ----------------------------------------------------------------------------------------------
# Train step.


def test_first_step_golden_metrics(setup):
    _, metrics = setup.step(setup.state, micro(golden_batch(setup.cfg)))
    metrics = jax.device_get(metrics)
    # Recorded once by running this step on CPU (jax 0.10.2, XLA_FLAGS from conftest) and
    # printing the metrics: tiny preset with num_hidden_layers=2, train_state.init(seed=0),
    # tests.utils.random_batch(seed=1) of [4, 32], LossConfig defaults.
    golden = {"loss": 7.298452, "ce": 5.624906, "mtp_ce": 5.578151, "grad_norm": 1.330418}
    for key, value in golden.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-4, err_msg=key)
    assert metrics["tokens"] == B * (L - 1)
    # Initial weights are small (std 0.02), so the first prediction is close to uniform.
    assert abs(metrics["ce"] - math.log(setup.cfg.vocab_size)) < 0.1
    assert metrics["load_imbalance"] >= 1.0
    chex.assert_shape(metrics["expert_load"], (setup.cfg.num_moe_layers, 8))


def test_loss_decreases_on_a_repetitive_batch(setup):
    # Every row cycles through a short pattern: learnable in a few dozen steps.
    pattern = np.arange(8) * 7 + 40
    tokens = np.stack([np.roll(np.resize(pattern, L), -r) for r in range(B)])
    batch = micro(as_batch(tokens))
    state, ces = setup.state, []
    for _ in range(25):
        state, metrics = setup.step(state, batch)
        ces.append(float(metrics["ce"]))
    assert np.all(np.isfinite(ces))
    assert ces[-1] < 0.5 * ces[0], ces
    assert int(state.step) == 25


def test_grad_accumulation_matches_full_batch(setup):
    # One document per row and no padding: both microbatches hold B/2 * (L-1) targets, so the
    # mean of microbatch gradients is the full-batch gradient.
    batch = golden_batch(setup.cfg)
    full, m1 = setup.step(setup.state, micro(batch, 1))
    accum, m2 = setup.step(setup.state, micro(batch, 2))
    # Adam's first moment after one step is (1 - b1) * the clipped mean gradient.
    mu_full, mu_accum = (optax.tree_utils.tree_get(s.opt_state, "mu") for s in (full, accum))
    chex.assert_trees_all_close(mu_accum, mu_full, atol=1e-8, rtol=0)
    chex.assert_trees_all_close(accum.params, full.params, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(accum.model_state, full.model_state, atol=0, rtol=0)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-4)
    assert m2["tokens"] == m1["tokens"] == B * (L - 1)
    # The update really moved the params (lr > 0 at step 1 without warmup).
    delta = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), full.params, setup.state.params)
    assert max(jax.tree.leaves(delta)) > 1e-4


# ----------------------------------------------------------------------------------------------
# Losses against hand computations.


def nll(logits_V, target) -> float:
    logits_V = np.asarray(logits_V, np.float64)
    m = logits_V.max()
    return float(m + np.log(np.exp(logits_V - m).sum()) - logits_V[target])


def sharpen(params):
    """A 50x larger output head: far-from-uniform predictions, so a misaligned target or a
    wrong mask changes the loss by much more than the tolerance."""
    return {**params, "lm_head": params["lm_head"] * 50.0}


def test_sft_loss_counts_only_completion_tokens(setup, forward_and_loss):
    tok = tokenizers.get_tokenizer("byte")
    pairs = [("12+30=", "42"), ("7*6=", "42"), ("abc", "def!"), ("x", "yz"), ("100-1=", "99")]
    batch = packing.sft_batch(pairs, tok, seq_len=L, num_rows=B)
    params = sharpen(setup.state.params)
    metrics, logits, _ = forward_and_loss(params, setup.state.model_state, as_batch(**batch))
    tokens, seg, mask = batch["tokens"], batch["segment_ids"], batch["loss_mask"]
    logits = np.asarray(logits)
    total, count, total_all = 0.0, 0, 0.0
    for b in range(B):
        for i in range(L - 1):
            if seg[b, i] == seg[b, i + 1] > 0:
                x = nll(logits[b, i], tokens[b, i + 1])
                total_all += x
                if mask[b, i + 1]:
                    total, count = total + x, count + 1
    # Completions and their EOS, every one predicted from inside its own pair.
    assert count == mask.sum() == sum(len(c) + 1 for _, c in pairs)
    assert metrics["tokens"] == count
    np.testing.assert_allclose(metrics["ce"], total / count, rtol=1e-5)
    n_all = int(((seg[:, :-1] == seg[:, 1:]) & (seg[:, 1:] > 0)).sum())
    assert abs(total_all / n_all - total / count) > 0.1  # the mask matters


def test_mtp_loss_targets_two_ahead_within_documents(setup, forward_and_loss):
    tok = tokenizers.get_tokenizer("byte")
    docs = ["3+4=7", "the cat sat on the mat", "12*12=144", "abcdefghijklmnopqrstuvwxyz", "ok"]
    batch = next(packing.PackedBatches(docs, tok, batch_size=B, seq_len=L, shuffle=False))
    seg = batch["segment_ids"]
    assert seg.max() > 1 and (seg == 0).any()  # several documents per row, and padding
    batch["loss_mask"] = np.ones_like(seg)
    params = sharpen(setup.state.params)
    metrics, _, aux = forward_and_loss(params, setup.state.model_state, as_batch(**batch))
    mtp_logits = np.asarray(aux["mtp_logits"][0])  # depth 1: position i predicts token i+2

    def ce(offset):
        terms = [
            nll(mtp_logits[b, i], batch["tokens"][b, i + offset])
            for b in range(B)
            for i in range(L - offset)
            if seg[b, i] == seg[b, i + offset] > 0
        ]
        return sum(terms) / len(terms)

    np.testing.assert_allclose(metrics["mtp_ce"], ce(2), rtol=1e-5)
    assert abs(ce(1) - ce(2)) > 0.1  # an off-by-one target would be caught
    expected = metrics["ce"] + setup.lc.mtp_weight * metrics["mtp_ce"]
    expected += setup.lc.balance_alpha * metrics["balance_loss"]
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Auxiliary-loss-free balancing.


def test_bias_update_reduces_load_imbalance(setup, forward_and_loss):
    cfg = setup.cfg
    params = setup.state.params
    # Skew the router: give every hidden state a common direction (a constant added to the
    # embeddings) and add a constant to the router columns of experts 0 and 3, so that for
    # nearly every token those two experts score highest.
    favoured = jnp.zeros(cfg.n_routed_experts).at[jnp.array([0, 3])].set(0.04)
    router = params["moe_layers"]["0"]["mlp"]["router"]
    params = {
        **params,
        "embed": {"embedding": params["embed"]["embedding"] + 0.02},
        "moe_layers": {
            "0": {
                **params["moe_layers"]["0"],
                "mlp": {**params["moe_layers"]["0"]["mlp"], "router": router + favoured},
            }
        },
    }

    def imbalance(aux):
        counts = np.asarray(aux["expert_counts"])  # [n_moe_layers, E]
        return float((counts.max(-1) / counts.mean(-1)).max())

    def run(rate, steps=60):
        state = setup.state.model_state
        for i in range(steps + 1):
            tokens, _ = random_batch(cfg, batch=B, length=L, seed=100 + i)
            batch = as_batch(tokens, loss_mask=jnp.ones_like(tokens))
            _, _, aux = forward_and_loss(params, state, batch)
            counts = transformer.counts_like_bias(cfg, state, aux)
            state = jax.tree.map(lambda b, c: moe.update_bias(b, c, rate), state, counts)
        return imbalance(aux), state

    frozen, frozen_state = run(0.0)
    balanced, balanced_state = run(0.01)
    chex.assert_trees_all_equal(frozen_state, setup.state.model_state)  # gamma=0: no change
    assert frozen > 3.0, frozen  # the skew works: 2 experts take most of the top-2 slots
    assert balanced < 0.6 * frozen, (balanced, frozen)
    bias = np.asarray(balanced_state["moe_bias"]["moe_layers"]["0"]["mlp"]["bias"])
    assert bias[0] < 0 and bias[3] < 0  # the favoured experts were pushed down


# ----------------------------------------------------------------------------------------------
# Config errors, NaN guard, loop behaviour.


def experiment_config(path="experiments/pretrain_moe.py", **flat):
    config = runpy.run_path(os.path.join(ROOT, path))["get_config"]()
    config.update_from_flattened_dict(flat)
    return config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.batch_size": 6, "train.grad_accum": 4}, "train.batch_size=6"),
        ({"train.seq_len": 2048}, "train.seq_len=2048 exceeds model.max_position_embeddings=1024"),
        ({"optim.learning_rate": 0.0}, "optim.learning_rate=0.0"),
        ({"train.num_steps": 0}, "train.num_steps=0"),
        ({"train.bias_update_rate": -1.0}, "train.bias_update_rate=-1.0"),
    ],
)
def test_bad_train_config_names_the_key(overrides, message):
    config = experiment_config(**overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        lm.validate_train_config(config, ModelConfig.from_config(config.model))


def test_default_experiment_configs_are_valid():
    for path in ("experiments/pretrain_moe.py", "experiments/pretrain_dense.py"):
        config = experiment_config(path)
        lm.validate_train_config(config, ModelConfig.from_config(config.model))


def test_cli_bad_train_value_fails_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    out = run_cli(
        ["--config.train.batch_size=6", "--config.train.grad_accum=4"], workdir, timeout=120
    )
    assert out.returncode != 0
    assert "train.batch_size=6 must be divisible by train.grad_accum=4" in out.stderr
    assert not workdir.exists()  # failed before loading data, compiling or writing anything


class FakeCheckpointer:
    def __init__(self):
        self.saved, self.extras = [], []

    def save(self, step, state, extra, force=False):
        self.saved.append(step)
        self.extras.append(extra)

    def wait(self):
        pass


def fake_run(tmp_path, checkpointer, nan_at=None, num_steps=6, **kwargs):
    """train_loop over a Python step function whose loss is NaN at step `nan_at`."""

    def step_fn(state, batch):
        step = state.step + 1
        loss = float("nan") if step == nan_at else 1.0 / step
        return types.SimpleNamespace(step=step), {"loss": np.float32(loss), "tokens": 10}

    consumed = []
    return loop.train_loop(
        state=types.SimpleNamespace(step=0),
        step_fn=step_fn,
        batches=(consumed.append(i) or i for i in range(100)),
        num_steps=num_steps,
        workdir=str(tmp_path),
        checkpointer=checkpointer,
        data_state=lambda: {"batches": len(consumed)},
        **kwargs,
    )


def test_array_metrics_are_written_every_array_every_steps(tmp_path):
    def step_fn(state, batch):
        step = state.step + 1
        load = np.full((2, 4), 0.25, np.float32)
        return types.SimpleNamespace(step=step), {"loss": np.float32(1 / step), "load": load}

    loop.train_loop(
        state=types.SimpleNamespace(step=0),
        step_fn=step_fn,
        batches=iter(range(100)),
        num_steps=25,
        workdir=str(tmp_path),
        checkpointer=None,
        checkpoint_every=100,
        data_state=dict,
        array_every=10,
    )
    rows = loop.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == list(range(1, 26))  # every step's scalars
    assert [r["step"] for r in rows if "load" in r] == [10, 20, 25]
    assert rows[9]["load"] == [[0.25] * 4] * 2


class _Slow(typing.NamedTuple):
    step: jax.Array
    x: jax.Array


def test_step_seconds_time_completed_steps_not_launches(tmp_path):
    """A jitted step returns before it has run: timing launches gave throughputs 30-100x too
    high. Each step here is ~5 GFLOP of matmuls (tens of ms); the loop's step_seconds must not
    be shorter than the same step run to completion on its own."""

    def step_fn(state, batch):
        m = jax.lax.fori_loop(0, 150, lambda i, m: jnp.tanh(m @ m), state.x)
        return _Slow(step=state.step + 1, x=m), {"loss": m[0, 0], "tokens": jnp.int32(10)}

    step_fn = jax.jit(step_fn)
    state = _Slow(step=jnp.int32(0), x=jax.random.normal(jax.random.key(0), (256, 256)) / 16)
    jax.block_until_ready(step_fn(state, 0))  # compiled
    alone = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(step_fn(state, 0))
        alone.append(time.perf_counter() - start)
    loop.train_loop(
        state=state,
        step_fn=step_fn,
        batches=iter(range(9)),
        num_steps=8,
        workdir=str(tmp_path),
        checkpointer=None,
        checkpoint_every=100,
        data_state=dict,
    )
    seconds = [r["step_seconds"] for r in loop.read_metrics(str(tmp_path))]
    # Under load (pytest -n 2) a step takes 0.7-1.5x its time alone; a launch takes ~1%.
    assert len(seconds) == 8 and min(seconds) >= 0.3 * min(alone), (seconds, alone)


def test_ctrl_c_saves_the_last_completed_step_with_its_data_position(tmp_path):
    checkpointer = FakeCheckpointer()

    def step_fn(state, batch):
        if state.step == 4:  # Ctrl-C while step 5 runs
            raise KeyboardInterrupt
        return types.SimpleNamespace(step=state.step + 1), {"loss": np.float32(1.0)}

    consumed = []
    with pytest.raises(KeyboardInterrupt):
        loop.train_loop(
            state=types.SimpleNamespace(step=0),
            step_fn=step_fn,
            batches=(consumed.append(i) or i for i in range(100)),
            num_steps=10,
            workdir=str(tmp_path),
            checkpointer=checkpointer,
            checkpoint_every=3,
            data_state=lambda: {"batches": len(consumed)},
        )
    assert checkpointer.saved == [3, 4]  # the periodic save, then the interrupted run's last
    assert checkpointer.extras[-1] == {"data": {"batches": 4}}  # step 5's batch is not counted
    assert [r["step"] for r in loop.read_metrics(str(tmp_path))] == [1, 2, 3, 4]


def test_nan_stops_training_naming_step_and_metric(tmp_path):
    with pytest.raises(loop.NonFiniteError, match=r"Non-finite loss=nan at step 3"):
        fake_run(tmp_path, FakeCheckpointer(), nan_at=3, checkpoint_every=2)
    with pytest.raises(loop.NonFiniteError, match="step 3"):
        loop.check_finite(3, {"loss": np.float32(np.inf), "tokens": 7})


def test_nan_at_a_checkpoint_step_is_not_saved(tmp_path):
    checkpointer = FakeCheckpointer()
    with pytest.raises(loop.NonFiniteError, match="loss=nan at step 4"):
        fake_run(tmp_path, checkpointer, nan_at=4, checkpoint_every=2)
    assert checkpointer.saved == [2]  # the state after the NaN step never reaches a checkpoint


def test_loop_checkpoints_evaluates_at_end_and_logs(tmp_path):
    evals = []

    def eval_fn(state):
        evals.append(state.step)
        return {"val_loss": 0.5}

    ckpt = FakeCheckpointer()
    state, rows = fake_run(
        tmp_path, ckpt, checkpoint_every=4, eval_fn=eval_fn, eval_every=0, log_every=2
    )
    assert state.step == 6
    assert ckpt.saved == [4, 6]
    # lm.restore_or_init reads the iterator position back from extra['data'].
    assert ckpt.extras == [{"data": {"batches": 4}}, {"data": {"batches": 6}}]
    assert evals == [6]  # eval_every=0: only at the end (configs.train documents it)
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert {r["step"] for r in loop.read_metrics(str(tmp_path))} == {2, 4, 6}


# ----------------------------------------------------------------------------------------------
# Kill and resume through the command line.

CLI_OVERRIDES = {
    "train.num_steps": 16,
    "train.checkpoint_every": 4,
    "train.eval_every": 0,  # validation once, at the end
    "train.eval_batches": 1,
    "train.seq_len": L,
    "train.batch_size": B,
    "train.log_every": 1,
    "data.num_documents": 2000,
    "data.num_validation": 200,
    "model.num_hidden_layers": 2,
}
KILL_TEST = "test_kill_and_resume_gives_identical_params"


def run_cli(extra_flags, workdir, timeout=600, wait=True, env_extra=None):
    """`python -m moe_rl.main` on the MoE experiment: the CompletedProcess, or with wait=False
    the Popen (output in <workdir>.log)."""
    cmd = [
        sys.executable,
        "-m",
        "moe_rl.main",
        "--config=experiments/pretrain_moe.py",
        f"--workdir={workdir}",
        *extra_flags,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}  # inherits XLA_FLAGS
    if wait:
        return subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
        )
    with open(f"{workdir}.log", "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


class CliRuns:
    """The three runs of the kill-and-resume test, sharing a data_dir and a persistent
    compilation cache (only the first run compiles; the others load its executables)."""

    def __init__(self, root):
        self.root = root
        self.flags = [f"--config.{k}={v}" for k, v in CLI_OVERRIDES.items()]
        self.flags.append(f"--config.data.data_dir={root / 'data'}")
        self.env = {
            "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        self.reference_dir = root / "reference"
        self._reference = None

    def start_reference(self):
        if self._reference is None:
            self._reference = run_cli(
                self.flags, self.reference_dir, wait=False, env_extra=self.env
            )

    def wait_reference(self, timeout=600):
        self.start_reference()
        returncode = self._reference.wait(timeout=timeout)
        log = open(f"{self.reference_dir}.log").read()
        assert returncode == 0, log[-3000:]
        return self.reference_dir

    def run(self, workdir, **kwargs):
        return run_cli(self.flags, workdir, env_extra=self.env, **kwargs)

    def stop(self):
        if self._reference is not None and self._reference.poll() is None:
            self._reference.kill()
            self._reference.wait()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    runs = CliRuns(tmp_path_factory.mktemp("cli"))
    yield runs
    runs.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_cli_reference_early(request):
    """The uninterrupted CLI run compiles for ~40 s on one core: when the kill-and-resume test
    is selected, start it before this module's in-process tests so they use the other core.
    (Not under pytest-xdist, whose workers would each start one.)"""
    selected = any(item.name == KILL_TEST for item in request.session.items)
    if selected and "PYTEST_XDIST_WORKER" not in os.environ:
        request.getfixturevalue("cli_runs").start_reference()


def finalized_steps(workdir) -> list[int]:
    """Checkpoint steps whose directory Orbax has renamed from its *.orbax-checkpoint-tmp*."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def metric_steps(workdir) -> list[int]:
    """Steps of the training-metric lines of metrics.jsonl, in the order they were written."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["step"] for r in rows if "loss" in r]


def restore_latest(workdir, config):
    """(state, extra, step) of the newest checkpoint of a CLI run with this config."""
    cfg = ModelConfig.from_config(config.model)
    tx = train_state.make_optimizer(config.optim, config.train.num_steps)
    abstract = jax.eval_shape(lambda: train_state.init(cfg, tx, config.seed))
    checkpointer = Checkpointer(str(workdir), async_save=False)
    restored = checkpointer.restore_latest(abstract)
    checkpointer.close()
    assert restored is not None, f"no readable checkpoint in {workdir}"
    return restored


def test_kill_and_resume_gives_identical_params(cli_runs, tmp_path):
    num_steps = CLI_OVERRIDES["train.num_steps"]
    reference = cli_runs.wait_reference()

    # Kill -9 as soon as a checkpoint at step >= 4 is finalized: the run still has at least
    # four steps and two checkpoints to go, more than a second of work.
    resumed = tmp_path / "resumed"
    proc = cli_runs.run(resumed, wait=False)
    try:
        deadline = time.monotonic() + 300
        while not [s for s in finalized_steps(resumed) if s >= 4]:
            assert proc.poll() is None, open(f"{resumed}.log").read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = max(finalized_steps(resumed))
    assert killed_at < num_steps, f"the kill landed too late (checkpoint {killed_at})"
    assert not (resumed / "summary.json").exists()
    logged_before_kill = len(metric_steps(resumed))

    out = cli_runs.run(resumed)  # the same command again
    assert out.returncode == 0, out.stderr[-3000:]
    # The second invocation continued from the newest checkpoint, not from scratch.
    assert metric_steps(resumed)[logged_before_kill:] == list(range(killed_at + 1, num_steps + 1))

    config = experiment_config(**CLI_OVERRIDES)
    ref_state, ref_extra, ref_step = restore_latest(reference, config)
    new_state, new_extra, new_step = restore_latest(resumed, config)
    assert ref_step == new_step == num_steps
    assert ref_extra == new_extra  # same data-iterator position
    for name in ("params", "model_state", "opt_state", "step"):
        jax.tree.map(
            np.testing.assert_array_equal, getattr(new_state, name), getattr(ref_state, name)
        )

    losses = []
    for workdir in (reference, resumed):
        rows = loop.read_metrics(str(workdir))
        losses.append({r["step"]: r["loss"] for r in rows if "loss" in r})
        assert sorted(losses[-1]) == list(range(1, num_steps + 1))
        summary = json.loads((workdir / "summary.json").read_text())
        assert summary["steps"] == num_steps
        assert math.isfinite(summary["final_val_loss"])
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
        assert (workdir / "loss.png").exists() and (workdir / "expert_load.png").exists()
    assert losses[0] == losses[1]

    # A third run of the finished command trains nothing and leaves every result as it was.
    before = {f: (resumed / f).read_bytes() for f in ("summary.json", "metrics.jsonl")}
    out = cli_runs.run(resumed)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"already finished at step {num_steps}" in out.stdout
    assert {f: (resumed / f).read_bytes() for f in before} == before


def test_a_corrupt_final_checkpoint_is_set_aside_and_retrained(tmp_path):
    """The final checkpoint of a finished run no longer reads: the rerun resumes from the one
    before, trains the last step again and saves it (it used to fail on every rerun with
    Orbax's StepAlreadyExistsError); the unreadable files are kept beside."""
    from tests.utils import tiny_pretrain_config

    workdir = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(3, data=1), str(workdir))
    for root, _, files in os.walk(workdir / "checkpoints" / "3" / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(3)
    summary = pretrain.run(tiny_pretrain_config(3, data=1), str(workdir))
    assert summary["steps"] == 3 and math.isfinite(summary["final_val_loss"])
    assert (workdir / "checkpoints" / "3.unreadable").is_dir()
    cfg = ModelConfig.from_config(tiny_pretrain_config(3).model)
    params, model_state = jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))
    reader = Checkpointer(str(workdir), read_only=True)
    _, step = reader.restore_latest_model({"params": params, "model_state": model_state})
    assert step == 3
