"""GRPO's training forward over shared-prefix rows: the full mask against attention by blocks.

    python benchmarks/prefix_attention.py [--models tiny --rows 2 --repeats 5]

A GRPO minibatch packs each question's prompt once and its G completions after it
(`rollout.pack_groups`). `transformer.forward(shared_prefix=True)` attends over the whole row
and masks the other completions' keys; `shared_prefix=(P, G)` computes each completion's
scores against the prompt and itself only (`attention.prefix_attention`). This script times
the reference forward (log-probs of every completion token, no gradient) and the policy update's
forward + backward (the gradient of a masked log-prob loss) both ways, on random weights and
tokens, in the shapes of the two R1-Zero experiments, and prints the peak temporary memory XLA
plans for each (`compiled.memory_analysis()`). Medians of --repeats runs after a compiling one;
ratios are masked / blocks from the same run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, preset
from moe_rl.train import rollout

# (name, prompt slots P, completions G, new tokens N): experiments/r1_zero.py (prompts of ~120
# tokens in a 128 bucket, 112 new tokens) and experiments/r1_zero_countdown.py (320 new).
SHAPES = (("r1_zero", 128, 16, 112), ("r1_zero_countdown", 128, 16, 320))


def rows(P: int, G: int, N: int, Q: int, seed: int = 0):
    """Q packed rows of random tokens: prompts of P - 8 tokens, completions of random lengths."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(3, 300, (Q, P)).astype(np.int32)
    prompts[:, :8] = 0
    completions = rng.integers(3, 300, (Q, G, N)).astype(np.int32)
    lengths = rng.integers(N // 4, N + 1, (Q, G))
    return rollout.pack_groups(prompts, np.full(Q, P - 8), completions, lengths)


def timed(fn, *args, repeats: int):
    jax.block_until_ready(fn(*args))  # compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def temp_mib(fn, *args) -> float:
    stats = fn.lower(*args).compile().memory_analysis()
    return (stats.temp_size_in_bytes if stats is not None else float("nan")) / 2**20


def bench(model: str, shape, Q: int, repeats: int) -> list[dict]:
    name, P, G, N = shape
    cfg = ModelConfig.from_config(preset(model, vocab_size=1024, num_nextn_predict_layers=0))
    params, state = transformer.init(cfg, jax.random.key(0))
    tokens, seg, pos = (jnp.asarray(a) for a in rows(P, G, N, Q))
    real = (seg > 0).astype(jnp.float32)
    out = []
    for layout, label in ((True, "masked row"), ((P, G), "by blocks")):

        def logp(params, layout=layout):
            logits, _, _ = transformer.forward(
                cfg, params, state, tokens, pos, seg, mtp=False, shared_prefix=layout
            )
            return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[
                ..., 0
            ]

        forward = jax.jit(logp)
        backward = jax.jit(jax.grad(lambda p: (logp(p) * real).sum()))
        out.append(
            {
                "shape": name,
                "model": model,
                "attention": label,
                "forward s": timed(forward, params, repeats=repeats),
                "forward MiB": temp_mib(forward, params),
                "fwd+bwd s": timed(backward, params, repeats=repeats),
                "fwd+bwd MiB": temp_mib(backward, params),
            }
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--rows", type=int, default=2, help="questions per batch (rows)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}; {args.rows} rows (questions) of "
        f"P + G x N slots, float32, medians of {args.repeats} after compiling\n"
    )
    cols = ("forward s", "forward MiB", "fwd+bwd s", "fwd+bwd MiB")
    print("| shape (P, G, N) | model | attention | " + " | ".join(cols) + " |")
    print("| --- | --- | --- |" + " ---: |" * len(cols))
    for model in args.models.split(","):
        for shape in SHAPES:
            masked, blocks = bench(model, shape, args.rows, args.repeats)
            label = f"{shape[0]} ({shape[1]}, {shape[2]}, {shape[3]})"
            for r in (masked, blocks):
                vals = " | ".join(
                    f"{r[c]:.3f}" if c.endswith(" s") else f"{r[c]:,.0f}" for c in cols
                )
                print(f"| {label} | {model} | {r['attention']} | {vals} |")
            ratios = " | ".join(f"{masked[c] / blocks[c]:.2f}x" for c in cols)
            print(f"| {label} | {model} | masked / blocks | {ratios} |")


if __name__ == "__main__":
    main()
