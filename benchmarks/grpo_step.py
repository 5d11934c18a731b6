"""Time of one GRPO step split into rollout / reference / train, in the shape used to time peers.

    python benchmarks/grpo_step.py [--models tiny,tiny_dense,small --steps 5]

8 prompts x 4 completions x 32 new tokens (EOS is id 263, which the byte tokenizer never
uses; a random model picks it rarely, so rows almost always run to the end: the mean is
printed), one update per step over all 32 completions, KL weight 0.04 (so the reference
forward runs), float32, random prompts of 64 tokens, random rewards. Medians after a
warm-up step (which includes compilation, reported separately). Peers' numbers on this
machine: ../shared/PEERS.md.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from moe_rl import sampling
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, preset
from moe_rl.train import grpo, grpo_loss, lm
from moe_rl.train.configs import optim

EOS, PAD = 263, 0


def bench(name: str, args) -> dict:
    cfg = ModelConfig.from_config(preset(name))
    params, model_state = transformer.init(cfg, jax.random.key(0))
    ref = jax.tree.map(jax.numpy.copy, (params, model_state))
    lc = grpo_loss.LossConfig(beta=0.04)
    tx = lm.make_optimizer(optim(learning_rate=1e-5, warmup_steps=0), 1000)
    state = lm.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        rng=jax.random.key(0),
    )
    update = grpo.make_update(cfg, lc, tx, 1.0, 0.0)
    ref_fn = jax.jit(grpo.completion_logprobs, static_argnums=(0, 6, 7, 8))
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=args.new)
    rng = np.random.default_rng(0)
    Q, G = args.prompts, args.generations
    times = {"rollout": [], "reference": [], "train": [], "total": []}
    lengths = []
    for step in range(args.steps + 1):
        prompts = rng.integers(3, 259, (Q, args.prompt_len)).tolist()
        t0 = time.perf_counter()
        out = sampling.generate(
            cfg, state.params, state.model_state, prompts, jax.random.key(step), sp,
            eos_id=EOS, pad_id=PAD, num_samples=G,
        )  # fmt: skip
        tokens, logp, n = (np.asarray(a) for a in jax.device_get(out))
        t1 = time.perf_counter()
        P = sampling.bucket(args.prompt_len)
        prompt_QP, plen = sampling.left_pad(prompts, PAD, P, Q)
        N = args.new
        seq, seg, pos = grpo.pack_groups(prompt_QP, plen, tokens.reshape(Q, G, N))
        ref_logp = np.asarray(ref_fn(cfg, *ref, seq, seg, pos, P, G, 1.0))
        t2 = time.perf_counter()
        rewards_QG = rng.random((Q, G)).astype(np.float32)
        mb = {
            "tokens": seq,
            "segment_ids": seg,
            "positions": pos,
            "mask": np.asarray(grpo_loss.completion_mask(n, N)).reshape(Q, G, N),
            "old_logp": logp.reshape(Q, G, N),
            "ref_logp": ref_logp,
            "advantages": np.asarray(grpo_loss.advantages(rewards_QG)),
        }
        state, metrics = update(state, mb, P, G)
        jax.block_until_ready(metrics)
        t3 = time.perf_counter()
        lengths.append(n.mean())
        if step == 0:
            first = t3 - t0
            continue
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            times[key].append(value)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": name, **med, "first": first, "length": float(np.mean(lengths)),
            "samples_per_s": Q * G / med["total"]}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,tiny_dense,small")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}; {args.prompts} prompts x "
        f"{args.generations} completions x {args.new} new tokens, prompt {args.prompt_len}, "
        f"beta 0.04, one update per step; medians of {args.steps} steps after warm-up\n"
    )
    header = (
        f"{'model':11} {'rollout s':>10} {'reference s':>12} {'train s':>8} {'step s':>8} "
        f"{'samples/s':>10} {'first step s':>13} {'mean new tokens':>16}"
    )
    print(header)
    for name in args.models.split(","):
        r = bench(name, args)
        print(
            f"{r['model']:11} {r['rollout']:10.3f} {r['reference']:12.3f} {r['train']:8.3f} "
            f"{r['total']:8.3f} {r['samples_per_s']:10.1f} {r['first']:13.1f} {r['length']:16.1f}"
        )


if __name__ == "__main__":
    main()
