"""Expert parallelism on 8 fake CPU devices: train-step time and parameter bytes per device.

    python benchmarks/expert_parallel.py [--steps 5 --batch 16 --seq_len 64 --eps 1 2 4 8]

For each EP the mesh is expert=EP x data=8/EP (the batch rows split over all 8 devices either
way) and the model the `small` preset MoE (16 routed experts, top-4, 1 shared; MLA; MTP). The
train step is the trainer's (lm.make_train_step: loss, AdamW update, bias update), jitted with
the state's shardings in and out and the state donated, as the pretraining recipe does. Times
are medians of `--steps` calls after a warm-up (compile) call; the EPs are interleaved round by
round so that load from other jobs hits them alike. Bytes are those device 0 holds of the
created state.

The 8 "devices" share this host's cores, so the time shows the cost of the collectives and
of smaller per-device matmuls, not a speed-up: on real accelerators each device has its own
compute and memory, and the point of EP is the memory column (routed experts / EP per device).
"""

from __future__ import annotations

import os

# The device count is fixed when JAX starts: set it before the first import of jax.
_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from moe_rl import perf, sharding  # noqa: E402
from moe_rl.models.config import ModelConfig, preset  # noqa: E402
from moe_rl.train import configs, lm, train_state  # noqa: E402

DEVICES = 8
MIB = 2**20


def make_batch(cfg: ModelConfig, rows: int, seq_len: int, seed: int) -> dict:
    """One [accum=1, rows, seq_len] batch of random tokens, one document per row."""
    tokens = jax.random.randint(jax.random.key(seed), (1, rows, seq_len), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(seq_len), tokens.shape)
    return {"tokens": tokens, "positions": positions, "segment_ids": jnp.ones_like(tokens)}


class Setup:
    """The sharded state, the compiled step and its batch on the expert=EP x data=8/EP mesh."""

    def __init__(self, cfg: ModelConfig, ep: int, batch: dict, seed: int):
        self.ep = ep
        self.mesh = sharding.make_mesh(dict(data=DEVICES // ep, expert=ep))
        sharding.check_batch(batch["tokens"].shape[1], self.mesh, "--batch")
        tx = train_state.make_optimizer(configs.optim(warmup_steps=0), 100)
        step = lm.make_train_step(cfg, lm.LossConfig(), tx, 1e-3)
        make = lambda: train_state.init(cfg, tx, seed)
        with jax.set_mesh(self.mesh):
            state_sh = sharding.state_shardings(jax.eval_shape(make), cfg, self.mesh)
            self.state = jax.jit(make, out_shardings=state_sh)()
            batch_sh = sharding.batch_sharding(self.mesh, 1)
            self.batch = sharding.put_batch(batch, batch_sh)
            self.step = jax.jit(
                step,
                in_shardings=(state_sh, batch_sh),
                out_shardings=(state_sh, None),
                donate_argnums=0,
            )
        self.param_bytes = sharding.addressable_bytes(self.state.params)
        self.routed_bytes = sharding.addressable_bytes(routed_experts(self.state.params))
        self.times_ms: list[float] = []
        self.compile_s, self.first_loss = self.call(record=False)

    def call(self, record: bool = True) -> tuple[float, float]:
        """One train step, blocked on; (seconds, loss)."""
        with jax.set_mesh(self.mesh):
            t0 = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch)
            loss = float(jax.block_until_ready(metrics["loss"]))
            seconds = time.perf_counter() - t0
        if record:
            self.times_ms.append(seconds * 1e3)
        return seconds, loss


def routed_experts(params) -> list:
    """The routed experts' weight arrays (experts_gate/up/down of every MoE layer)."""
    return [
        leaf
        for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if str(getattr(kp[-1], "key", kp[-1])).startswith("experts_")
    ]


def print_table(setups: list[Setup]) -> None:
    base = setups[0]
    base_ms = np.median(base.times_ms)
    print(
        f"{'EP':>3s} {'mesh':>18s}{'step ms':>9s}{'/EP1':>7s}{'params MiB/dev':>16s}{'/EP1':>7s}"
        f"{'routed MiB/dev':>16s}{'/EP1':>7s}{'compile s':>11s}{'loss 1':>9s}"
    )
    for s in setups:
        ms = np.median(s.times_ms)
        mesh = f"expert={s.ep} data={DEVICES // s.ep}"
        print(
            f"{s.ep:3d} {mesh:>18s}{ms:9.0f}{ms / base_ms:6.2f}x"
            f"{s.param_bytes / MIB:16.3f}{s.param_bytes / base.param_bytes:6.3f}x"
            f"{s.routed_bytes / MIB:16.3f}{s.routed_bytes / base.routed_bytes:6.3f}x"
            f"{s.compile_s:11.1f}{s.first_loss:9.4f}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per EP")
    parser.add_argument("--batch", type=int, default=16, help="rows per step (global)")
    parser.add_argument("--seq_len", type=int, default=64, help="128: ~3x slower on 2 cores")
    parser.add_argument("--eps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--preset", default="small", help="moe_rl.models.config preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if jax.device_count() < DEVICES:
        raise SystemExit(f"needs {DEVICES} devices; XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
    if args.eps[0] != 1:
        raise SystemExit("--eps must start with 1: the ratios are to EP=1")

    # One config for every EP: 'auto' as under expert parallelism ('sparse'; ragged has no EP form).
    cfg = ModelConfig.from_config(preset(args.preset), expert_parallel=max(args.eps))
    print(perf.machine_description())
    print(
        f"preset {args.preset!r}: {cfg.n_routed_experts} routed experts top-"
        f"{cfg.num_experts_per_tok}, D={cfg.hidden_size}, {cfg.num_hidden_layers} layers; train "
        f"step on {args.batch} x {args.seq_len} tokens; median of {args.steps} steps after a "
        f"warm-up, EPs interleaved; ratios to EP=1 in this run"
    )
    batch = make_batch(cfg, args.batch, args.seq_len, args.seed)
    setups = [Setup(cfg, ep, batch, args.seed) for ep in args.eps]
    for _ in range(args.steps):
        for s in setups:
            s.call()
    print_table(setups)


if __name__ == "__main__":
    main()
