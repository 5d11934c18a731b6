"""MoE layer on this machine: routed-expert dispatch implementations vs the dense FFN bound.

    python benchmarks/moe_layer.py [--tokens 4096 --experts 8 64 --repeats 11]

Each MoE row is a whole layer: router (x @ W_router, sigmoid, top-k, normalised gates), one
shared expert and the routed experts through `routed_experts(impl, ...)`. The bound is a dense
SwiGLU FFN of width (top_k + shared) * F: the same activated FLOPs, no routing. fwd+bwd is one
jit of `jax.vjp` returning the output and the gradients w.r.t. x and every weight. Times are
medians after a warm-up call, sparse and bound interleaved so that machine load hits them alike.
The dense oracle and ragged_dot take seconds per call: `--slow_repeats` calls, no warm-up.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl import perf
from moe_rl.models.dispatch import group_rows, routed_experts

IMPLS = {"sparse dispatch": "sparse", "dense oracle": "dense", "ragged_dot": "ragged"}
SLOW = ("dense oracle", "ragged_dot")
BOUND = "dense FFN bound"


def swiglu(x_TD, w_gate_DF, w_up_DF, w_down_FD):
    return (jax.nn.silu(x_TD @ w_gate_DF) * (x_TD @ w_up_DF)) @ w_down_FD


def route(x_TD, w_router_DE, top_k: int):
    """Sigmoid scores, top-k experts, gates normalised over the chosen k (in float32)."""
    scores_TE = jax.nn.sigmoid(x_TD.astype(jnp.float32) @ w_router_DE)
    _, ids_TK = jax.lax.top_k(scores_TE, top_k)
    gates_TK = jnp.take_along_axis(scores_TE, ids_TK, axis=-1)
    return ids_TK, gates_TK / gates_TK.sum(-1, keepdims=True)


def moe_layer(impl: str, top_k: int):
    def layer(p, x_TD):
        ids_TK, gates_TK = route(x_TD, p["router"], top_k)
        routed_TD = routed_experts(impl, x_TD, ids_TK, gates_TK, *p["experts"])
        return swiglu(x_TD, *p["shared"]) + routed_TD

    return layer


def make_params(key, D: int, F: int, E: int, top_k: int, shared: int):
    """Random (never zero) weights, scaled by 1/sqrt(fan-in): the MoE layer's and the bound's."""
    k = iter(jax.random.split(key, 10))

    def w(shape):
        return jax.random.normal(next(k), shape, jnp.float32) / np.sqrt(shape[-2])

    Fs, W = F * shared, F * (top_k + shared)
    moe = {
        "router": w((D, E)),
        "shared": (w((D, Fs)), w((D, Fs)), w((Fs, D))),
        "experts": (w((E, D, F)), w((E, D, F)), w((E, F, D))),
    }
    return moe, (w((D, W)), w((D, W)), w((W, D)))


def fwd_and_fwd_bwd(f, p, x_TD, dy_TD):
    """Both steps compiled ahead of time, with their arguments."""

    def fwd_bwd(p, x, dy):
        y, vjp = jax.vjp(f, p, x)
        return y, vjp(dy)

    fwd = jax.jit(f).lower(p, x_TD).compile()
    return (fwd, (p, x_TD)), (jax.jit(fwd_bwd).lower(p, x_TD, dy_TD).compile(), (p, x_TD, dy_TD))


def call_ms(fn, args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) * 1e3


def bench(args, E: int) -> dict[str, tuple[float, float, int]]:
    """{row: (fwd ms, fwd+bwd ms, repeats)}."""
    T, D, F, K = args.tokens, args.hidden, args.expert_width, args.top_k
    kx, kp, kdy = jax.random.split(jax.random.key(args.seed), 3)
    x_TD = jax.random.normal(kx, (T, D), jnp.float32)
    dy_TD = jax.random.normal(kdy, (T, D), jnp.float32)
    moe_p, bound_p = make_params(kp, D, F, E, K, args.shared)

    ids_TK, _ = route(x_TD, moe_p["router"], K)
    load_E = np.bincount(np.asarray(ids_TK).ravel(), minlength=E)
    R = group_rows(T, K, E, capacity_factor=1.25, chunk_rows=1024)  # sparse_dispatch defaults
    groups = int(np.sum(-(-load_E // R)))
    print(
        f"\nE={E}: copies per expert max {load_E.max()}, mean {load_E.mean():.0f}; sparse "
        f"dispatch: {groups} groups of {R} rows ({groups * R / (T * K):.2f}x the copies)"
    )

    steps = {
        name: fwd_and_fwd_bwd(moe_layer(impl, K), moe_p, x_TD, dy_TD)
        for name, impl in IMPLS.items()
    }
    steps[BOUND] = fwd_and_fwd_bwd(lambda p, x: swiglu(x, *p), bound_p, x_TD, dy_TD)
    times = {name: ([], []) for name in steps}

    def measure(names, repeats):
        for _ in range(repeats):
            for name in names:
                for t, (fn, a) in zip(times[name], steps[name], strict=True):
                    t.append(call_ms(fn, a))

    fast = [name for name in steps if name not in SLOW]
    for name in fast:  # warm-up
        for fn, a in steps[name]:
            call_ms(fn, a)
    measure(fast, args.repeats)
    measure(SLOW, args.slow_repeats)
    return {name: (np.median(f), np.median(fb), len(f)) for name, (f, fb) in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--expert_width", type=int, default=128)
    parser.add_argument("--top_k", type=int, default=6)
    parser.add_argument("--shared", type=int, default=1, help="shared experts")
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--slow_repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(perf.machine_description())
    print(
        f"float32, T={args.tokens} D={args.hidden} F={args.expert_width}, top-{args.top_k} + "
        f"{args.shared} shared; medians, ratios to the bound in the same run"
    )
    for E in args.experts:
        results = bench(args, E)
        bound_fwd, bound_fwd_bwd, _ = results[BOUND]
        print(f"{'':17s}{'fwd ms':>9s}{'fwd+bwd ms':>12s}{'fwd+bwd/bound':>15s}{'fwd/bound':>11s}")
        for name, (fwd, fwd_bwd, n) in results.items():
            print(
                f"{name:17s}{fwd:9.1f}{fwd_bwd:12.1f}{fwd_bwd / bound_fwd_bwd:14.2f}x"
                f"{fwd / bound_fwd:10.2f}x  ({n} repeats)"
            )


if __name__ == "__main__":
    main()
