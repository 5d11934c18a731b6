"""MoE layer on this machine: routed-expert dispatch implementations vs the dense FFN bound.

    python benchmarks/moe_layer.py [--tokens 4096 --experts 8 64 --repeats 7]

Each MoE row is a whole layer: router (x @ W_router, sigmoid, top-k, normalised gates), one
shared expert and the routed experts through `routed_experts(impl, ...)`. The bound is a dense
SwiGLU FFN of width (top_k + shared) * F: the same activated FLOPs with no routing at all.
fwd+bwd is one `jax.vjp` (gradients w.r.t. x and every weight). Times are medians over repeats
after a warm-up, the implementations interleaved so that machine load hits them alike.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.models.dispatch import routed_experts


def swiglu(x_TD, w_gate_DF, w_up_DF, w_down_FD):
    return (jax.nn.silu(x_TD @ w_gate_DF) * (x_TD @ w_up_DF)) @ w_down_FD


def moe_layer(impl: str, top_k: int):
    """Router + shared expert + routed experts, as the DeepSeek-V3 MoE layer computes them."""

    def layer(p, x_TD):
        scores_TE = jax.nn.sigmoid(x_TD.astype(jnp.float32) @ p["router"])
        _, ids_TK = jax.lax.top_k(scores_TE, top_k)
        gates_TK = jnp.take_along_axis(scores_TE, ids_TK, axis=-1)
        gates_TK = gates_TK / gates_TK.sum(-1, keepdims=True)
        shared_TD = swiglu(x_TD, *p["shared"])
        routed_TD = routed_experts(impl, x_TD, ids_TK, gates_TK, *p["experts"])
        return shared_TD + routed_TD

    return layer


def dense_ffn(p, x_TD):
    return swiglu(x_TD, *p)


def make_params(key, D: int, F: int, E: int, top_k: int, shared: int):
    ks = jax.random.split(key, 8)

    def w(k, shape, fan_in):
        return jax.random.normal(k, shape, jnp.float32) / np.sqrt(fan_in)

    moe = {
        "router": w(ks[0], (D, E), D),
        "shared": (w(ks[1], (D, F * shared), D), w(ks[2], (D, F * shared), D)),
        "experts": (w(ks[3], (E, D, F), D), w(ks[4], (E, D, F), D), w(ks[5], (E, F, D), F)),
    }
    moe["shared"] += (w(ks[6], (F * shared, D), F),)
    W = F * (top_k + shared)
    bound = (w(ks[1], (D, W), D), w(ks[2], (D, W), D), w(ks[7], (W, D), W))
    return moe, bound


def timed(fn, args, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench(args, E: int) -> list[tuple[str, float, float]]:
    T, D, F, K = args.tokens, args.hidden, args.expert_width, args.top_k
    kx, kp, kdy = jax.random.split(jax.random.key(args.seed), 3)
    x_TD = jax.random.normal(kx, (T, D), jnp.float32)
    dy_TD = jax.random.normal(kdy, (T, D), jnp.float32)
    moe_p, bound_p = make_params(kp, D, F, E, K, args.shared)
    rows = {
        "sparse dispatch": (moe_layer("sparse", K), moe_p),
        "dense oracle": (moe_layer("dense", K), moe_p),
        "ragged_dot": (moe_layer("ragged", K), moe_p),
        "dense FFN bound": (dense_ffn, bound_p),
    }
    compiled = {}
    for name, (f, p) in rows.items():
        fwd = jax.jit(f)
        fwd_bwd = jax.jit(lambda p, x, dy, f=f: jax.vjp(f, p, x)[1](dy))
        for fn, a in ((fwd, (p, x_TD)), (fwd_bwd, (p, x_TD, dy_TD))):
            jax.block_until_ready(fn(*a))  # compile and warm up
        compiled[name] = (fwd, fwd_bwd, p)
    times = {name: ([], []) for name in rows}
    for _ in range(args.repeats):
        for name, (fwd, fwd_bwd, p) in compiled.items():
            if name == "ragged_dot" and len(times[name][0]) >= args.ragged_repeats:
                continue
            times[name][0].extend(timed(fwd, (p, x_TD), 1))
            times[name][1].extend(timed(fwd_bwd, (p, x_TD, dy_TD), 1))
    return [(name, float(np.median(f)), float(np.median(fb))) for name, (f, fb) in times.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--expert_width", type=int, default=128)
    parser.add_argument("--top_k", type=int, default=6)
    parser.add_argument("--shared", type=int, default=1, help="shared experts")
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ragged_repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(
        f"jax {jax.__version__}, device {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}), {os.cpu_count()} CPUs"
    )
    print(
        f"T={args.tokens} D={args.hidden} F={args.expert_width} "
        f"top-{args.top_k} + {args.shared} shared; median of {args.repeats} repeats "
        f"({args.ragged_repeats} for ragged_dot), float32"
    )
    for E in args.experts:
        results = bench(args, E)
        bound = dict((n, fb) for n, _, fb in results)["dense FFN bound"]
        print(f"\nE={E}")
        print(f"{'':18s}{'fwd ms':>10s}{'fwd+bwd ms':>12s}{'/ bound':>9s}")
        for name, fwd, fwd_bwd in results:
            print(f"{name:18s}{fwd:10.1f}{fwd_bwd:12.1f}{fwd_bwd / bound:8.2f}x")


if __name__ == "__main__":
    main()
