"""Generation speed of the sampler, and the KV-cache size of MLA against standard attention.

    python benchmarks/sampling.py [--batch 64 --prompt 64 --new 128 --models tiny,small]

For each model: generated tokens/s of `moe_rl.sampling.generate` (KV cache, one jit), of the
same model decoding with the naive (decompressing) MLA path, and of recompute-everything
decoding (a full cache-free forward over the whole [B, prompt + new] buffer for every new
token, also one jit). Every recompute step costs the same, so it is timed over the first
`--recompute-steps` tokens and scaled to the full length. Greedy, so all must produce the same
tokens (checked on the tokens the recompute run makes). Then the cache bytes per token
(all layers) against a standard multi-head attention cache with the same heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl import sampling
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, preset
from moe_rl.summary import kv_cache_bytes_per_token

EOS, PAD = 263, 0  # 263: an id the byte tokenizer never produces


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def recompute_decode(cfg, params, state, prompt_BP, key, steps, new_tokens):
    """Greedy decoding of `steps` tokens without a cache: every step is a full forward over
    the [B, P+N] buffer."""
    del key
    B, P = prompt_BP.shape
    buf_BL = jnp.concatenate([prompt_BP, jnp.full((B, new_tokens), PAD, jnp.int32)], axis=1)
    positions_BL = jnp.broadcast_to(jnp.arange(P + new_tokens), buf_BL.shape)

    def step(t, buf_BL):
        seg_BL = (jnp.arange(P + new_tokens) < P + t).astype(jnp.int32)[None].repeat(B, 0)
        logits, _, _ = transformer.forward(
            cfg, params, state, buf_BL, positions_BL, seg_BL, mtp=False
        )
        token_B = jnp.argmax(logits[:, P + t - 1], axis=-1).astype(jnp.int32)
        return jax.lax.dynamic_update_slice(buf_BL, token_B[:, None], (0, P + t))

    return jax.lax.fori_loop(0, steps, step, buf_BL)[:, P:]


def timed(fn, repeats: int) -> tuple[float, object]:
    out = jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def bench_model(name: str, args) -> list[dict]:
    cfg = ModelConfig.from_config(preset(name))
    params, state = transformer.init(cfg, jax.random.key(0))
    prompts = np.asarray(
        jax.random.randint(jax.random.key(1), (args.batch, args.prompt), 3, 259), np.int32
    )
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=args.new)
    rows = []

    def sampler(c):
        return lambda: sampling.generate(
            c, params, state, list(prompts), jax.random.key(2), sp, eos_id=EOS, pad_id=PAD
        )

    seconds, out = timed(sampler(cfg), args.repeats)
    reference = np.asarray(out.tokens)
    generated = int(np.asarray(out.lengths).sum())
    variants = [("KV cache" + (", absorbed MLA" if cfg.attention == "mla" else ""), seconds)]
    if cfg.attention == "mla":
        naive = dataclasses.replace(cfg, mla_absorb=False)
        s, o = timed(sampler(naive), args.repeats)
        variants.append(("KV cache, naive MLA", s))
        assert np.array_equal(np.asarray(o.tokens), reference), "naive MLA decode differs"
    steps = min(args.recompute_steps, args.new)
    s, o = timed(
        lambda: recompute_decode(cfg, params, state, prompts, jax.random.key(2), steps, args.new),
        1,
    )
    variants.append(("recompute everything", s * args.new / steps))
    head = reference[:, :steps]
    same = np.array_equal(np.asarray(o)[:, :steps][head != PAD], head[head != PAD])
    cache = kv_cache_bytes_per_token(cfg)
    for label, s in variants:
        rows.append(
            dict(
                model=name,
                decode=label,
                tokens_per_s=generated / s,
                seconds=s,
                speedup=variants[-1][1] / s,
                same_tokens=same,
                cache=cache,
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recompute-steps", type=int, default=16)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {args.batch}, prompt "
        f"{args.prompt}, {args.new} new tokens, greedy, float32; medians of {args.repeats}\n"
    )
    print(f"{'model':8} {'decode':24} {'tokens/s':>10} {'seconds':>9} {'vs recompute':>13}")
    rows = [r for name in args.models.split(",") for r in bench_model(name, args)]
    for r in rows:
        print(
            f"{r['model']:8} {r['decode']:24} {r['tokens_per_s']:10,.0f} {r['seconds']:9.2f} "
            f"{r['speedup']:12.1f}x"
        )
    print(f"\nsame tokens as recompute-everything: {all(r['same_tokens'] for r in rows)}\n")
    print(f"{'model':8} {'cache bytes/token':>18} {'MHA bytes/token':>16} {'ratio':>7}")
    for name in dict.fromkeys(r["model"] for r in rows):
        c = next(r["cache"] for r in rows if r["model"] == name)
        print(
            f"{name:8} {c['cache']:18,} {c['mha_equivalent']:16,} "
            f"{c['cache'] / c['mha_equivalent']:7.3f}"
        )


if __name__ == "__main__":
    main()
