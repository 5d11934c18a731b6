"""Peer timing with Tunix (JAX): GRPO steps on a Qwen2 loaded from a Hugging Face folder.

Runs in the Tunix environment (benchmarks/peers/setup.sh), on a folder written by
`moe_rl.hf.save_pretrained` (Tunix ships Qwen2 but no DeepSeek-V3/MLA model); prints one JSON
line {"times": [...]} with the seconds of each step after `--warmup` untimed ones (the first
includes compilation). Called by benchmarks/peers/run.py, alternately with moe_rl.

    python tunix_worker.py --model DIR --prompts 8 --generations 4 --new 32
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax


def word_tokenizer(vocab_size: int):
    """Token id i <-> word 't<i>' (the same tokenizer as hf_worker.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="t0", eos_token="t263", unk_token="t0"
    )


def even_fraction_of_text(text: str) -> float:
    """The benchmark's reward on a completion 't<i> t<j> ...': the fraction of even ids."""
    ids = [int(w[1:]) for w in text.split() if w[1:].isdigit()]
    return sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face Qwen2 folder")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    from tunix.models.qwen2 import model as qwen2
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    with open(os.path.join(args.model, "config.json")) as f:
        hf = json.load(f)
    config = qwen2.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf["head_dim"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(hf["rope_theta"]),
        norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=hf["tie_word_embeddings"],
    )
    # Auto axes: Tunix's sharding annotations need them (PEERS.md).
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with mesh:
        actor = qwen2_params.create_model_from_safe_tensors(args.model, config, mesh)
        reference = qwen2_params.create_model_from_safe_tensors(args.model, config, mesh)
    tokenizer = word_tokenizer(hf["vocab_size"])
    steps = args.warmup + args.steps
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=args.new,
        max_prompt_length=args.prompt_len,
        kv_cache_size=args.prompt_len + args.new + 8,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        eos_tokens=[-1],  # never stop early: every completion is exactly `new` tokens
    )
    training = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adamw(1e-5, b1=0.9, b2=0.95, weight_decay=0.1),
        eval_every_n_steps=10_000,
        max_steps=steps,
        mini_batch_size=args.prompts,
        train_micro_batch_size=args.prompts,
        rollout_micro_batch_size=args.prompts,
        compute_logps_micro_batch_size=args.prompts,
        pbar_description=None,
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=actor,
        reference=reference,
        tokenizer=tokenizer,
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={
                rl_cluster_lib.Role.ACTOR: mesh,
                rl_cluster_lib.Role.REFERENCE: mesh,
                rl_cluster_lib.Role.ROLLOUT: mesh,
            },
            rollout_engine="vanilla",
            offload_to_cpu=False,
            training_config=training,
            rollout_config=rollout,
        ),
    )
    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=args.generations, num_iterations=1, beta=0.04, epsilon=0.2
        ),
        reward_fns=lambda prompts, completions, **kw: [
            even_fraction_of_text(c) for c in completions
        ],
    )

    rng = np.random.default_rng(0)
    stamps = []

    def batches():  # one batch per step; its request marks the end of the previous step
        for _ in range(steps):
            stamps.append(time.perf_counter())
            rows = rng.integers(3, 259, (args.prompts, args.prompt_len))
            # an array, not a list: Tunix repeats every leaf G times with numpy
            yield {"prompts": np.array([" ".join(f"t{t}" for t in row) for row in rows])}
        stamps.append(time.perf_counter())

    with mesh:
        learner.train(batches())
    end = time.perf_counter()
    times = list(np.diff(stamps + [end]))
    print(json.dumps({"times": [float(t) for t in times[args.warmup :]], "stamps": len(stamps)}))


if __name__ == "__main__":
    main()
