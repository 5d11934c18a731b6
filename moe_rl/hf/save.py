"""Writing a Hugging Face folder: config.json, safetensors shards and the tokenizer."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
from safetensors.numpy import save_file

from moe_rl.hf.config import hf_config
from moe_rl.hf.names import _tensor_name, _to_hf, placements
from moe_rl.models.config import ModelConfig


def _hf_tensors(cfg: ModelConfig, params, state, with_mtp: bool):
    """Yields (name, numpy array) of every stored tensor of our (params, state)."""
    trees = [(params, placements(cfg, params))]
    if state:
        trees.append((state, placements(cfg, state)))
    for tree, places in trees:
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        for (path, leaf), p in zip(leaves, jax.tree.leaves(places), strict=True):
            if not with_mtp and any(str(getattr(k, "key", "")).startswith("mtp_") for k in path):
                continue
            w = np.asarray(jax.device_get(leaf))
            stacked = isinstance(p.layers, tuple)
            for i, layer in enumerate(p.layers if stacked else (p.layers,)):
                w_layer = w[i] if stacked else w
                if "{e}" in p.rule.name:
                    for e in range(w_layer.shape[0]):
                        yield _tensor_name(p.rule, layer, e), _to_hf(p.rule, w_layer[e])
                else:
                    yield _tensor_name(p.rule, layer), _to_hf(p.rule, w_layer)


def save_pretrained(
    folder: str,
    cfg: ModelConfig,
    params,
    state: dict | None = None,
    tokenizer=None,
    max_shard_bytes: int = 2 << 30,
    mtp: bool = True,
) -> str:
    """Writes config.json, model*.safetensors (sharded with an index beyond max_shard_bytes)
    and, for a Hugging Face tokenizer, its tokenizer.json / tokenizer_config.json: a folder
    `transformers.AutoModelForCausalLM.from_pretrained` loads, and `load_params` reads back.

    MTP layers are written for DeepseekV3 and V3.2 (as DeepSeek stores them; transformers lists
    them as unexpected and ignores them) unless `mtp=False`, e.g. for serving;
    Qwen2/Llama/DeepseekV2 have no MTP, so the module is left out (with a warning).
    """
    config = hf_config(cfg)
    with_mtp = mtp and config["model_type"] in ("deepseek_v3", "deepseek_v32")
    if config["model_type"] == "deepseek_v2":  # no correction bias in V2's format
        if state and any(np.any(np.asarray(b) != 0) for b in jax.tree.leaves(state)):
            raise ValueError(
                "Cannot export to Hugging Face format: DeepseekV2 (softmax routing)"
                " has no routing bias, and this model's moe_bias is not zero"
            )
        state = {}
    if cfg.num_nextn_predict_layers and not with_mtp:
        if mtp:
            logging.warning(
                "%s has no multi-token prediction: the MTP module is not exported",
                config["architectures"][0],
            )
        if "num_nextn_predict_layers" in config:
            config["num_nextn_predict_layers"] = 0
    if tokenizer is not None and getattr(tokenizer, "path", None):
        config.update(
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "model*.safetensors*")):
        os.remove(old)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in _hf_tensors(cfg, params, state or {}, with_mtp):
        if size and size + w.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = np.ascontiguousarray(w)
        size += w.nbytes
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(folder, file), metadata={"format": "pt"})
            weight_map.update({k: file for k in shard})
            total += sum(w.nbytes for w in shard.values())
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if tokenizer is not None and getattr(tokenizer, "path", None):
        source = os.path.dirname(tokenizer.path)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if os.path.exists(os.path.join(source, name)) and source != os.path.abspath(folder):
                shutil.copy(os.path.join(source, name), os.path.join(folder, name))
    for name in os.listdir(folder):  # readable by others, as a model folder is meant to be
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.chmod(path, 0o644)
    return folder
