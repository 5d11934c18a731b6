"""Model FLOPs utilisation: this machine's matmul peak, then the pretraining and GRPO steps.

    python benchmarks/mfu.py [--model small --batch 16 --seq-len 256 --steps 5]
    python benchmarks/mfu.py --model tiny --steps 2 --grpo-steps 1   # a quick check

MFU = model FLOPs per step / step time / peak. The peak is the best FLOP/s of jnp matmuls in
the model's compute dtype ('auto': float32 on CPU, bfloat16 on GPU/TPU) of a few sizes (best
of several runs each), measured in the same process. Model FLOPs are
`moe_rl.models.counting.flops_per_token` (6 x activated matmul parameters + causal
attention; the training-only MTP module is not counted, so MFU is a lower bound) times the
tokens: for pretraining, batch x seq-len tokens through forward and backward; for a GRPO step
(the shape of benchmarks/grpo_step.py, timed by its code), the rollout's and the reference's
tokens through the forward pass only (a third) and the packed rows through forward and backward
(`moe_rl.recipes.distill_vs_rl.estimate`). Step times are medians after a warm-up step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from moe_rl import perf
from moe_rl.models import backend, counting
from moe_rl.models.config import ModelConfig, preset
from moe_rl.recipes.distill_vs_rl import estimate
from moe_rl.train import configs, lm, train_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_step  # noqa: E402  (benchmarks/grpo_step.py: the GRPO step timed the peers' way)

PEAK_SIZES = (512, 1024, 2048)


def matmul_peak(repeats: int, dtype="float32") -> dict[int, float]:
    """Best FLOP/s of an n x n x n matmul in `dtype` for each n of PEAK_SIZES."""
    return {n: perf.measure_matmul_peak(n, repeats, dtype) for n in PEAK_SIZES}


def pretrain_step(name: str, batch: int, seq_len: int, steps: int, **overrides) -> dict:
    """Median seconds of the jitted pretraining step (lm.make_train_step, the pretraining
    recipe's optimizer and loss) on random tokens, one document per row; `overrides` change
    the preset's model fields."""
    cfg = ModelConfig.from_config(preset(name, **overrides))
    t = configs.train(batch_size=batch, seq_len=seq_len)
    tx = train_state.make_optimizer(configs.optim(), t.num_steps)
    state = train_state.init(cfg, tx, 0)
    step = jax.jit(
        lm.make_train_step(cfg, lm.LossConfig.from_config(t), tx, t.bias_update_rate),
        donate_argnums=0,
    )
    rng = np.random.default_rng(0)
    shape = (1, batch, seq_len)  # [grad_accum, rows, length]
    data = {
        "tokens": rng.integers(3, 259, shape).astype(np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape),
        "segment_ids": np.ones(shape, np.int32),
    }
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    flops = counting.flops_per_token(cfg, seq_len) * batch * seq_len
    return {
        "seconds": float(np.median(times)),
        "flops": flops,
        "first": first,
        "times": times,
        "cfg": cfg,  # 'auto' resolved: dtype, moe_impl, attention_impl of this backend
    }


def grpo(name: str, args) -> dict:
    """benchmarks/grpo_step.py's step, and its model FLOPs (rollout, reference, train)."""
    ns = argparse.Namespace(
        prompts=args.prompts,
        generations=args.generations,
        new=args.new,
        prompt_len=args.prompt_len,
        steps=args.grpo_steps,
    )
    r = grpo_step.bench(name, ns)
    cfg = ModelConfig.from_config(preset(name))
    Q, G, P, N = args.prompts, args.generations, args.prompt_len, args.new
    packed = Q * (P + G * N)  # prompt once per question, then its G completions
    rollout = Q * P + Q * G * r["length"]  # prefill + decoded tokens
    seq = P + N  # what each completion attends to
    train = estimate(cfg, packed, 0, seq)
    total = estimate(cfg, packed, rollout + packed, seq)  # + reference forward
    return {**r, "flops": total, "train_flops": train}


def row(what: str, flops: float, seconds: float, peak: float) -> str:
    achieved = flops / seconds
    return (
        f"| {what} | {flops:.3g} | {seconds:.3f} | {achieved / 1e9:.1f} | "
        f"{100 * achieved / peak:.1f}% |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small", help="model preset of the pretraining step")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed pretraining steps")
    parser.add_argument("--grpo-model", default="", help="GRPO model preset (default: --model)")
    parser.add_argument("--grpo-steps", type=int, default=5, help="timed GRPO steps; 0 skips")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--peak-repeats", type=int, default=5)
    args = parser.parse_args()

    print(perf.machine_description())
    dtype = ModelConfig.from_config(preset(args.model)).dtype  # the peak of the model's matmuls
    peaks = matmul_peak(args.peak_repeats, dtype)
    pre = pretrain_step(args.model, args.batch, args.seq_len, args.steps)
    g = grpo(args.grpo_model or args.model, args) if args.grpo_steps else None
    # The peak again after the steps: on a shared machine take the best of both measurements.
    after = matmul_peak(args.peak_repeats, dtype)
    peak = max(*peaks.values(), *after.values())
    sizes = ", ".join(f"{n}: {max(peaks[n], after[n]) / 1e9:.0f}" for n in PEAK_SIZES)
    print(f"{dtype} matmul peak {peak / 1e9:.1f} GFLOP/s (GFLOP/s by size n x n x n: {sizes})")
    print(f"model: {backend.describe(pre['cfg'])}\n")

    print("| step | model FLOPs | seconds | GFLOP/s | MFU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        row(
            f"pretraining, {args.model}, {args.batch} x {args.seq_len} tokens",
            pre["flops"],
            pre["seconds"],
            peak,
        )
    )
    if g is not None:
        name = args.grpo_model or args.model
        shape = f"{args.prompts} x {args.generations} x {args.new} new tokens"
        print(row(f"GRPO step, {name}, {shape}", g["flops"], g["total"], peak))
        print(row("  of which the update (fwd + bwd)", g["train_flops"], g["train"], peak))
    print(
        f"\npretraining: first step (compile) {pre['first']:.1f} s, steps "
        + ", ".join(f"{s:.2f}" for s in pre["times"])
    )
    if g is not None:
        print(
            f"GRPO: rollout {g['rollout']:.3f} s, reference {g['reference']:.3f} s, update "
            f"{g['train']:.3f} s, mean new tokens {g['length']:.1f}, first step {g['first']:.1f} s"
        )


if __name__ == "__main__":
    main()
