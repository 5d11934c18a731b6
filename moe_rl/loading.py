"""One way to read a model from where a run names it: a Hugging Face folder or a moe_rl workdir.

    params, model_state, description = loading.load_model(source, cfg, shardings, key=...)

A Hugging Face folder (config.json + safetensors) is streamed into `shardings`; a workdir gives
its newest readable checkpoint's model (any train state: pretraining, SFT, GRPO), read only.
Anything else is a ValueError naming the config key. A fresh initialisation ('' in most
configs) means different things to different recipes (pretrain now, start from random), so it
stays theirs.
"""

from __future__ import annotations

import os

import jax

from moe_rl import hf
from moe_rl.checkpoint import Checkpointer
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig


def load_model(source: str, cfg: ModelConfig, shardings=None, *, key: str = "source"):
    """(params, model_state, description) of the model at `source`; `shardings` (params,
    model_state) places it on a mesh; `key` names the config field in errors."""
    if hf.is_hf_folder(source):
        params, model_state = hf.load_params(source, cfg, shardings)
        return params, model_state, f"{source} (Hugging Face)"
    if not os.path.isdir(os.path.join(source, "checkpoints")):
        raise ValueError(
            f"{key}={source!r} is neither a Hugging Face folder (config.json + *.safetensors) "
            "nor a workdir with checkpoints/ (train one first, e.g. experiments/pretrain_moe.py "
            "writes runs/pretrain_moe) and has no readable checkpoint"
        )

    def init():
        params, model_state = transformer.init(cfg, jax.random.key(0))
        return {"params": params, "model_state": model_state}

    abstract = jax.eval_shape(init)
    checkpointer = Checkpointer(source, read_only=True)
    restored = checkpointer.restore_latest_model(abstract)
    checkpointer.close()
    if restored is None:
        raise ValueError(f"{key}={source!r} has no readable checkpoint")
    model, step = restored
    params, model_state = model["params"], model["model_state"]
    if shardings is not None:
        params = jax.device_put(params, shardings[0])
        model_state = jax.device_put(model_state, shardings[1])
    return params, model_state, f"{source} step {step}"
