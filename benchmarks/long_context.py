"""Attention cost against context length: MLA (DeepSeek-V3), DSA (V3.2) and V4's hybrid attention.

    python benchmarks/long_context.py [--size tiny] [--contexts 1024,2048,...,32768]
        [--repeats 3] [--budget_gib 8] [--out docs/results/long_context]

For each generation's preset of one size (`tiny`, `tiny_v32`, `tiny_v4`, or the `small_*` ones)
this times one attention layer on random weights and inputs, batch 1, float32:

* prefill: the full forward over L tokens (causal), seconds per token;
* decode: one new token against a cache holding L tokens, seconds per token;
* memory: XLA's temporary buffers of the compiled prefill (`memory_analysis`) and the cache's
  bytes per token at L (what a long context costs to keep).

MLA and DSA are one layer (`attention.MLA`; DSA is MLA with the lightning indexer's top-k).
V4's layers differ by `layer_types`: each kind is timed and the row is their mean weighted by
how many layers of the preset have it (so it is the per-layer cost of that model). A prefill
whose compiled temporaries exceed --budget_gib is not run (its cell says so), nor compiled when
an estimate of 16 bytes per (query, key) pair does: every full forward here builds [L, L]
masks (and MLA/DSA [L, L] scores), V4's too, so its prefill is O(L^2) in memory although it
reads O(L) keys per query; its decode is not. The crossover lines give the shortest context
from which each sparse attention is faster per token than MLA. Ratios and crossovers come from
one run; the machine and its load are printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.models.attention import MLA, init_layer_cache
from moe_rl.models.compressed_attention import V4Attention, init_v4_layer_cache
from moe_rl.models.config import ModelConfig, preset
from moe_rl.summary import kv_cache_bytes_per_token

CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768)
NAMES = {"": "MLA (V3)", "_v32": "DSA (V3.2)", "_v4": "V4 hybrid"}
PAIR_BYTES = 16  # a full forward's memory per (query, key) pair, for the budget check


def layers_of(cfg: ModelConfig) -> list[tuple[object, float]]:
    """(attention module, weight) per distinct layer kind; weights sum to 1."""
    if cfg.attention != "v4":
        return [(MLA(cfg), 1.0)]
    kinds = sorted(set(cfg.layer_types))
    n = len(cfg.layer_types)
    return [(V4Attention(cfg, k), cfg.layer_types.count(k) / n) for k in kinds]


def new_cache(cfg: ModelConfig, module, slots: int) -> dict:
    if cfg.attention == "v4":
        return init_v4_layer_cache(cfg, module.layer_type, 1, slots)
    return init_layer_cache(cfg, 1, slots)


def timed(fn, *args, repeats: int, calls: int = 1) -> float:
    """Median over `repeats` of the mean time of `calls` back-to-back calls."""
    jax.block_until_ready(fn(*args))  # compiles (and warms up)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / calls)
    return float(np.median(times))


def bench_layer(cfg, module, params, L: int, repeats: int, budget: float) -> dict:
    """One layer kind at context L: prefill and decode seconds per token, prefill temp bytes."""
    D = cfg.hidden_size
    key = jax.random.key(L)
    x = jax.random.normal(key, (1, L, D), jnp.float32)
    pos = jnp.arange(L)[None]
    out = {"prefill_temp_bytes": float("nan"), "prefill_s_per_token": None}
    # Every full forward here holds [L, L] masks and scores: ~15 bytes per pair measured up to
    # 16k. Past the budget it is not even compiled (compiling can take as much).
    if PAIR_BYTES * L * L <= budget:
        causal = jnp.tril(jnp.ones((L, L), bool))[None]
        prefill = jax.jit(lambda p, x, pos, mask: module.apply({"params": p}, x, pos, mask)[0])
        temp = prefill.lower(params, x, pos, causal).compile().memory_analysis()
        out["prefill_temp_bytes"] = float(temp.temp_size_in_bytes) if temp else float("nan")
        if out["prefill_temp_bytes"] <= budget:
            out["prefill_s_per_token"] = timed(prefill, params, x, pos, causal, repeats=repeats)
            out["prefill_s_per_token"] /= L
        del causal

    # Decode the token at slot L against a cache of L filled slots (random contents: the time
    # does not depend on them, top-k included).
    cache = new_cache(cfg, module, L + 1)
    cache = jax.tree.map(
        lambda a: jax.random.normal(key, a.shape, jnp.float32).astype(a.dtype), cache
    )
    mask = jnp.ones((1, 1, L + 1), bool)

    def step(p, x1, cache):
        return module.apply({"params": p}, x1, jnp.full((1, 1), L), mask, cache, jnp.int32(L))[0]

    decode = jax.jit(step)
    out["decode_s_per_token"] = timed(decode, params, x[:, :1], cache, repeats=repeats, calls=20)
    return out


def bench_model(name: str, contexts, repeats: int, budget: float) -> list[dict]:
    cfg = ModelConfig.from_config(preset(name, num_nextn_predict_layers=0))
    rows = []
    kinds = layers_of(cfg)
    init_len = 64
    x0 = jnp.zeros((1, init_len, cfg.hidden_size))
    mask0 = jnp.tril(jnp.ones((init_len, init_len), bool))[None]
    params = [
        m.init(jax.random.key(0), x0, jnp.arange(init_len)[None], mask0)["params"] for m, _ in kinds
    ]
    for L in contexts:
        parts = [
            (bench_layer(cfg, m, p, L, repeats, budget), w)
            for (m, w), p in zip(kinds, params, strict=True)
        ]
        prefill = [r["prefill_s_per_token"] for r, _ in parts]
        rows.append(
            {
                "model": name,
                "context": L,
                "prefill_s_per_token": None
                if any(v is None for v in prefill)
                else sum(v * w for v, (_, w) in zip(prefill, parts, strict=True)),
                "decode_s_per_token": sum(r["decode_s_per_token"] * w for r, w in parts),
                "prefill_temp_bytes": max(r["prefill_temp_bytes"] for r, _ in parts),
                "cache_bytes_per_token": kv_cache_bytes_per_token(cfg, L)["cache"]
                / cfg.num_hidden_layers,
            }
        )
        print(f"  {name} L={L}: {rows[-1]}", flush=True)
    return rows


def crossover(rows, base: str, other: str, key: str):
    """The shortest context from which `other` is faster per token than `base` at every
    longer measured context (a context where `base` is over budget counts as faster; None:
    not faster at the longest)."""
    by = {(r["model"], r["context"]): r[key] for r in rows}
    found = None
    for L in sorted({r["context"] for r in rows}, reverse=True):
        a, b = by.get((base, L)), by.get((other, L))
        if a is None and b is None:  # neither measured there (both over budget)
            continue
        if b is None or (a is not None and b >= a):
            break
        found = L
    return found


def _mib(b: float) -> str:
    return "not compiled" if b != b else f"{b / 2**20:,.0f}"


def table(rows, models, machine: str) -> str:
    fmt_t = lambda v: "over budget" if v is None else f"{v * 1e6:,.1f}"
    lines = [
        f"Attention of one layer, batch 1, float32; {machine}.",
        "",
        "| context | model | prefill us / token | decode us / token | prefill temp MiB "
        "| cache bytes / token / layer |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['context']:,} | {NAMES[r['model'][len(models[0]) :]]} (`{r['model']}`) | "
            f"{fmt_t(r['prefill_s_per_token'])} | {r['decode_s_per_token'] * 1e6:,.1f} | "
            f"{_mib(r['prefill_temp_bytes'])} | {r['cache_bytes_per_token']:,.0f} |"
        )
    lines.append("")
    for other in models[1:]:
        for key, what in (("prefill_s_per_token", "prefill"), ("decode_s_per_token", "decode")):
            L = crossover(rows, models[0], other, key)
            when = f"from {L:,} tokens" if L else "at none of these contexts"
            lines.append(f"- {NAMES[other[len(models[0]) :]]} {what} is faster than MLA {when}.")
    return "\n".join(lines) + "\n"


def figure(rows, models, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        ("prefill_s_per_token", "prefill, us per token", 1e6),
        ("decode_s_per_token", "decode, us per token", 1e6),
        ("cache_bytes_per_token", "KV cache bytes per token per layer", 1.0),
    )
    for ax, (key, title, scale) in zip(axes, panels, strict=True):
        for name in models:
            pts = [(r["context"], r[key]) for r in rows if r["model"] == name and r[key]]
            if pts:
                xs, ys = zip(*pts, strict=True)
                label = NAMES[name[len(models[0]) :]]
                ax.plot(xs, np.array(ys) * scale, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget_gib", type=float, default=8.0)
    parser.add_argument("--out", default="", help="folder for long_context.{md,json,png}")
    parser.add_argument(
        "--from_json", default="", help="re-render the table and figure of a run's JSON"
    )
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    models = [args.size + suffix for suffix in NAMES]
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        machine, rows = saved["machine"], saved["rows"]
        models = list(dict.fromkeys(r["model"] for r in rows))
    else:
        load = os.getloadavg()[0]
        machine = (
            f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} CPUs, load "
            f"average {load:.1f} at the start; medians of {args.repeats} after compiling"
        )
        rows = []
        for name in models:
            rows += bench_model(name, contexts, args.repeats, args.budget_gib * 2**30)
    text = table(rows, models, machine)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "long_context.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "long_context.json"), "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=2)
        figure(rows, models, os.path.join(args.out, "long_context.png"))
    return rows


if __name__ == "__main__":
    main()
