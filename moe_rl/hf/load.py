"""Reading a Hugging Face folder: safetensors streamed into our pytrees, sharded as asked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# ----------------------------------------------------------------------------------------------
# Reading
from moe_rl.hf.config import NON_WEIGHTS, model_config
from moe_rl.hf.names import Placement, _hf_shape, _tensor_name, _to_ours, placements
from moe_rl.hf.reader import _Reader
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.models.moe import BIAS_COLLECTION


def _expected(cfg: ModelConfig, tree: Any, places: Any) -> dict[str, tuple[int, ...]]:
    """Every stored tensor our tree needs, with its stored shape."""
    needed: dict[str, tuple[int, ...]] = {}
    for leaf, p in zip(jax.tree.leaves(tree), jax.tree.leaves(places), strict=True):
        shape = tuple(leaf.shape)
        layers = p.layers if isinstance(p.layers, tuple) else (p.layers,)
        if isinstance(p.layers, tuple):
            shape = shape[1:]
        experts: tuple = (None,)
        if "{e}" in p.rule.name:
            experts, shape = tuple(range(shape[0])), shape[1:]
        for layer in layers:
            for e in experts:
                needed[_tensor_name(p.rule, layer, e)] = _hf_shape(p.rule, shape)
    return needed


def _ignorable(key: str, cfg: ModelConfig) -> bool:
    """Stored tensors we deliberately do not read: non-weights, and the MTP layers' copies of
    the (shared) embedding and output head."""
    if key.endswith(NON_WEIGHTS):
        return True
    parts = key.split(".")
    mtp_layer = len(parts) > 3 and parts[2].isdigit() and int(parts[2]) >= cfg.num_hidden_layers
    if mtp_layer and parts[1] == "layers":
        return ".".join(parts[3:]) in ("embed_tokens.weight", "shared_head.head.weight")
    return False


def check_tensors(reader: _Reader, needed: dict[str, tuple[int, ...]], cfg: ModelConfig):
    """One ValueError naming every missing, misshapen and unexpected tensor."""
    problems = []
    missing = sorted(k for k in needed if k not in reader.keys)
    if missing:
        problems.append(f"missing tensors {missing}")
    bad = [
        f"{k}: stored {reader.shape(k)}, expected {s}"
        for k, s in needed.items()
        if k in reader.keys and reader.shape(k) != s
    ]
    if bad:
        problems.append("misshapen tensors [" + "; ".join(sorted(bad)) + "]")
    extra = sorted(k for k in reader.keys - set(needed) if not _ignorable(k, cfg))
    if extra:
        problems.append(f"unexpected tensors {extra}")
    if problems:
        raise ValueError(f"{reader.folder}: " + "; ".join(problems))


def _builder(reader: _Reader, p: Placement, shape: tuple[int, ...], dtype) -> Callable:
    """index -> the numpy block of our leaf at `index`, reading only the tensors it covers."""
    stacked = isinstance(p.layers, tuple)
    expert = "{e}" in p.rule.name

    def build(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        rest, per = list(index), list(shape)
        layers = [p.layers]
        if stacked:
            layers = list(p.layers)[rest.pop(0)]
            per.pop(0)
        experts = [None]
        if expert:
            experts = list(range(per[0]))[rest.pop(0)]
            per.pop(0)

        def one(layer, e):
            w = reader.get(_tensor_name(p.rule, layer, e))
            return _to_ours(p.rule, w, tuple(per)).astype(dtype)[tuple(rest)]

        blocks = [[one(layer, e) for e in experts] for layer in layers]
        out = np.stack([np.stack(b) if expert else b[0] for b in blocks])
        return out if stacked else out[0]

    return build


def _stored_collections(reader: _Reader, cfg: ModelConfig, state, places) -> dict[str, bool]:
    """Whether each model-state collection is read from the folder: the routing bias
    (moe_bias) when the folder has it (DeepSeek-V2's softmax routing has none: zeros), every
    other one (V4's moe_hash table) always."""
    out = {}
    for col in state:
        names = _expected(cfg, state[col], places[col])
        out[col] = col != BIAS_COLLECTION or any(k in reader.keys for k in names)
    return out


def load_params(folder: str, cfg: ModelConfig, shardings: tuple | None = None):
    """(params, model_state) of `cfg`'s model from the folder's safetensors.

    `shardings`: optional (params, model_state) trees of NamedShardings (e.g. from
    `sharding.model_shardings`); each array is created directly in its sharding from the
    slices its devices need. Parameters are cast to `cfg.param_dtype`, the routing bias stays
    float32 (zeros when the checkpoint has none, e.g. DeepSeek-V2's softmax routing) and
    DeepSeek-V4's hash table (moe_hash) int32.
    """
    reader = _Reader(folder)
    abstract_params, abstract_state = jax.eval_shape(
        lambda: transformer.init(cfg, jax.random.key(0))
    )
    param_places = placements(cfg, abstract_params)
    needed = _expected(cfg, abstract_params, param_places)
    state_places = placements(cfg, abstract_state) if abstract_state else {}
    stored = _stored_collections(reader, cfg, abstract_state, state_places)
    for col in abstract_state:
        if stored[col]:
            needed.update(_expected(cfg, abstract_state[col], state_places[col]))
    check_tensors(reader, needed, cfg)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = (
            jax.tree.map(lambda _: device, abstract_params),
            jax.tree.map(lambda _: device, abstract_state),
        )

    def load(tree, places, sh, stored=True):
        def leaf(x, p, s):
            if not stored:
                return jax.device_put(np.zeros(x.shape, x.dtype), s)
            build = _builder(reader, p, tuple(x.shape), np.dtype(x.dtype))
            return jax.make_array_from_callback(x.shape, s, build)

        return jax.tree.map(leaf, tree, places, sh)

    params = load(abstract_params, param_places, shardings[0])
    state = {
        col: load(abstract_state[col], state_places[col], shardings[1][col], stored[col])
        for col in abstract_state
    }
    logging.info("Loaded %d tensors from %s", len(needed), folder)
    return params, state


def load_pretrained(folder: str, shardings: tuple | None = None, **runtime):
    """(cfg, params, model_state) of a Hugging Face folder; see `model_config`, `load_params`."""
    cfg = model_config(folder, **runtime)
    params, state = load_params(folder, cfg, shardings)
    return cfg, params, state
