"""Time of one GRPO step split into rollout / reference / train, in the shape used to time peers.

    python benchmarks/grpo_step.py [--models tiny,tiny_dense,small --steps 5]

8 prompts x 4 completions x 32 new tokens (EOS is id 263, which the byte tokenizer never
uses; a random model picks it rarely, so rows almost always run to the end: the mean is
printed), one update per step over all 32 completions, KL weight 0.04 (so the reference
forward runs), float32, random prompts of 64 tokens, random rewards. Medians after a
warm-up step (which includes compilation, reported separately). The peers in the same shape:
benchmarks/peers/ (run.sh).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from moe_rl import sampling
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, preset
from moe_rl.train import grpo_loss, grpo_step, rollout, train_state
from moe_rl.train.configs import optim

EOS, PAD = 263, 0


def make_step(cfg: ModelConfig, params, model_state, args, reward_fn=None, eos_id: int = EOS):
    """step(i) -> seconds of rollout / reference / train / total and the mean completion length,
    for one GRPO step on the policy (params, model_state) (updated in place across calls).
    `reward_fn(tokens [Q*G, N]) -> [Q*G]` scores the completions (default: random rewards);
    eos_id=-1 makes every completion exactly args.new tokens long."""
    ref = jax.tree.map(jax.numpy.copy, (params, model_state))
    lc = grpo_loss.LossConfig(beta=0.04)
    tx = train_state.make_optimizer(optim(learning_rate=1e-5, warmup_steps=0), 1000)
    state = train_state.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=jax.tree.map(jax.numpy.copy, params),
        opt_state=tx.init(params),
        model_state=jax.tree.map(jax.numpy.copy, model_state),
        rng=jax.random.key(0),
    )
    update = grpo_step.make_update(cfg, lc, tx, 1.0, 0.0)
    ref_fn = jax.jit(grpo_step.completion_logprobs, static_argnums=(0, 6, 7, 8))
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=args.new)
    rng = np.random.default_rng(0)
    Q, G = args.prompts, args.generations

    def step(i: int) -> dict:
        nonlocal state
        prompts = rng.integers(3, 259, (Q, args.prompt_len)).tolist()
        t0 = time.perf_counter()
        out = sampling.generate(
            cfg,
            state.params,
            state.model_state,
            prompts,
            jax.random.key(i),
            sp,
            eos_id=eos_id,
            pad_id=PAD,
            num_samples=G,
        )
        parts = jax.device_get((out.tokens, out.logprobs, out.lengths))
        tokens, logp, n = (np.asarray(a) for a in parts)
        t1 = time.perf_counter()
        P = sampling.bucket(args.prompt_len)
        prompt_QP, plen = sampling.left_pad(prompts, PAD, P, Q)
        N = args.new
        seq, seg, pos = rollout.pack_groups(prompt_QP, plen, tokens.reshape(Q, G, N))
        ref_logp = np.asarray(ref_fn(cfg, *ref, seq, seg, pos, P, G, 1.0))
        t2 = time.perf_counter()
        if reward_fn is None:
            rewards_QG = rng.random((Q, G)).astype(np.float32)
        else:
            rewards_QG = np.asarray(reward_fn(tokens), np.float32).reshape(Q, G)
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
        return {
            "rollout": t1 - t0,
            "reference": t2 - t1,
            "train": t3 - t2,
            "total": t3 - t0,
            "length": float(n.mean()),
        }

    return step


def bench(name: str, args, **overrides) -> dict:
    """Medians of args.steps GRPO steps after a warm-up; `overrides` change the preset's fields."""
    cfg = ModelConfig.from_config(preset(name, **overrides))
    params, model_state = transformer.init(cfg, jax.random.key(0))
    step = make_step(cfg, params, model_state, args)
    first = step(0)["total"]
    runs = [step(i) for i in range(1, args.steps + 1)]
    med = {
        k: float(np.median([r[k] for r in runs]))
        for k in ("rollout", "reference", "train", "total")
    }
    length = float(np.mean([r["length"] for r in runs]))
    samples_per_s = args.prompts * args.generations / med["total"]
    return {"model": name, **med, "first": first, "length": length, "samples_per_s": samples_per_s}


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
