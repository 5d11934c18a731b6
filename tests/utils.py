"""Small helpers shared by tests."""

import functools
import os
import runpy

import jax
import jax.numpy as jnp

from moe_rl.models import config as model_config
from moe_rl.models import transformer


def make_config(preset: str = "tiny", **overrides) -> model_config.ModelConfig:
    return model_config.ModelConfig.from_config(model_config.preset(preset, **overrides))


def random_batch(cfg, batch: int = 2, length: int = 12, seed: int = 1):
    tokens = jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    return tokens, positions


@functools.cache
def jitted_forward(cfg, mtp: bool = True):
    """transformer.forward compiled once per (config, mtp); tests call it many times."""
    return jax.jit(
        lambda params, state, tokens, positions, segment_ids=None, cache=None: transformer.forward(
            cfg, params, state, tokens, positions, segment_ids, cache, mtp=mtp
        )
    )


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_pretrain_config(num_steps: int, **mesh):
    """experiments/pretrain_moe.py shrunk to seconds per step, on the mesh given
    (sharding tests: one process with 8 devices, or several processes)."""
    config = runpy.run_path(os.path.join(ROOT, "experiments/pretrain_moe.py"))["get_config"]()
    config.update_from_flattened_dict(
        {
            "train.num_steps": num_steps,
            "train.batch_size": 8,
            "train.seq_len": 32,
            "train.eval_batches": 1,
            "train.checkpoint_every": 2,
            "data.num_documents": 200,
            "data.num_validation": 20,
            **{f"mesh.{k}": v for k, v in mesh.items()},
        }
    )
    return config
