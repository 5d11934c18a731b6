"""Sampler/trainer mismatch of an MoE policy, with and without routing replay, per compute dtype.

    python benchmarks/rl_mismatch.py [--init=<workdir with a checkpoint>] [--out=<folder>]

The sampler (prefill + cached decode, MLA's absorbed attention) and the trainer (one packed
forward over prompt + completions, as a GRPO update runs it) compute the same model by
different op orders. For each compute dtype (weights float32) this samples G completions of Q
prompts, recording each token's experts, and measures over the completion tokens:
|log pi_sampler - log pi_trainer| (mean, max) with the trainer routing by itself and with the
sampler's routing replayed (grpo.routing_replay), and the share of (token, MoE layer) routing
decisions that differ between them. Without --init the tiny MoE is random, with a random
balancing bias (so that selection is not the unbiased top-k); prompts are random tokens.
Prints a table and writes mismatch.json / mismatch.md to --out (default: docs/results/rl_moe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import numpy as np

from moe_rl import checkpoint, evaluate, sampling
from moe_rl.models.config import ModelConfig, preset
from moe_rl.train import grpo_step, rollout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD, EOS = 0, 1


def model(init: str):
    # float32 and the einsum attention on every backend: main() changes the dtype alone.
    over = dict(vocab_size=384, num_nextn_predict_layers=0, dtype="float32", attention_impl="xla")
    cfg = ModelConfig.from_config(preset("tiny", **over))
    variables = evaluate.init_model(cfg, 0)
    if init:
        abstract = jax.eval_shape(lambda: variables)
        variables = checkpoint.Checkpointer(init).restore_latest_model(abstract)[0]
    else:
        key = jax.random.key(1)
        variables["model_state"] = jax.tree.map(
            lambda b: 0.3 * jax.random.normal(key, b.shape), variables["model_state"]
        )
    return cfg, variables["params"], variables["model_state"]


def measure(cfg, params, state, Q: int, G: int, N: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(2, cfg.vocab_size, rng.integers(8, 33))) for _ in range(Q)]
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=N)
    out = sampling.generate(
        cfg,
        params,
        state,
        prompts,
        jax.random.key(seed),
        sp,
        eos_id=EOS,
        pad_id=PAD,
        num_samples=G,
        record_routing=True,
    )
    packed, lengths, P, replay = rollout.pack_samples(prompts, out, G, PAD)
    mask = np.arange(N) < lengths[..., None]
    sampler = np.asarray(out.logprobs).reshape(Q, G, N)[mask]
    row = {"tokens": int(mask.sum())}
    forward = jax.jit(grpo_step.completion_logits, static_argnums=(0, 6, 7, 9))
    for name, apply in (("own routing", False), ("replay", True)):
        logits, targets, aux = forward(cfg, params, state, *packed, P, G, replay, apply)
        trainer = np.asarray(sampling.token_logprobs(logits, targets))[mask]
        diff = np.abs(trainer.astype(np.float64) - sampler)
        row[name] = {
            "logp_diff_mean": float(diff.mean()),
            "logp_diff_max": float(diff.max()),
            "routing_mismatch": float(grpo_step.routing_mismatch(aux)),
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default="", help="a workdir holding a tiny-MoE checkpoint")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "rl_moe"))
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    cfg32, params, state = model(args.init)
    rows, start = {}, time.perf_counter()
    for dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(cfg32, dtype=dtype)
        for seed in range(args.seeds):
            rows[f"{dtype} seed {seed}"] = measure(
                cfg, params, state, args.questions, args.generations, args.new_tokens, seed
            )
    lines = [
        "| compute | seed | tokens | own routing: mean / max abs(d logp) | routing decisions "
        "differing | replayed: mean / max abs(d logp) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        dtype, _, seed = name.split()
        own, rep = r["own routing"], r["replay"]
        lines.append(
            f"| {dtype} | {seed} | {r['tokens']} | {own['logp_diff_mean']:.2e} / "
            f"{own['logp_diff_max']:.2e} | {own['routing_mismatch']:.4f} | "
            f"{rep['logp_diff_mean']:.2e} / {rep['logp_diff_max']:.2e} |"
        )
    where = f"{platform.machine()} {platform.processor() or ''}".strip()
    weights = f"checkpoint {args.init}" if args.init else "random init, random balancing bias"
    head = (
        f"Sampler/trainer mismatch of the tiny MoE ({weights}; "
        f"{args.questions} prompts x {args.generations} completions x {args.new_tokens} new "
        f"tokens at T=1; jax {jax.__version__} on {jax.devices()[0].platform} ({where}); "
        f"benchmarks/rl_mismatch.py, {time.perf_counter() - start:.0f} s)"
    )
    text = head + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mismatch.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "mismatch.json"), "w") as f:
        json.dump({"setup": head, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
