"""Tensor names: our parameter paths <-> Hugging Face tensor names, shapes and layouts."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

import moe_rl.hf.names_v4 as names_v4
from moe_rl.hf.rule import Rule
from moe_rl.models.config import ModelConfig
from moe_rl.models.moe import BIAS_COLLECTION, HASH_COLLECTION
from moe_rl.models.transformer import layer_stacks

# ----------------------------------------------------------------------------------------------
# Tensor names: our parameter paths <-> Hugging Face tensors.


def _layer_rules(sub: str) -> Rule:
    """The rule of a decoder-layer parameter path (below the layer)."""
    table = {
        "input_layernorm/scale": Rule("input_layernorm.weight", "copy"),
        "post_attention_layernorm/scale": Rule("post_attention_layernorm.weight", "copy"),
        "attn/q_proj": Rule("self_attn.q_proj.weight"),
        "attn/q_a_proj": Rule("self_attn.q_a_proj.weight"),
        "attn/q_a_norm/scale": Rule("self_attn.q_a_layernorm.weight", "copy"),
        "attn/q_b_proj": Rule("self_attn.q_b_proj.weight"),
        "attn/kv_a_proj": Rule("self_attn.kv_a_proj_with_mqa.weight"),
        "attn/kv_a_norm/scale": Rule("self_attn.kv_a_layernorm.weight", "copy"),
        "attn/kv_b_proj": Rule("self_attn.kv_b_proj.weight"),
        "attn/o_proj": Rule("self_attn.o_proj.weight", in_dims=2),
        "attn/k_proj": Rule("self_attn.k_proj.weight"),
        "attn/v_proj": Rule("self_attn.v_proj.weight"),
        "attn/q_proj_bias": Rule("self_attn.q_proj.bias", "flat"),
        "attn/k_proj_bias": Rule("self_attn.k_proj.bias", "flat"),
        "attn/v_proj_bias": Rule("self_attn.v_proj.bias", "flat"),
        # DeepSeek-V3.2's lightning indexer (sparse attention)
        "attn/indexer/wq_b": Rule("self_attn.indexer.wq_b.weight"),
        "attn/indexer/wk": Rule("self_attn.indexer.wk.weight"),
        "attn/indexer/k_norm_scale": Rule("self_attn.indexer.k_norm.weight", "copy"),
        "attn/indexer/k_norm_bias": Rule("self_attn.indexer.k_norm.bias", "copy"),
        "attn/indexer/weights_proj": Rule("self_attn.indexer.weights_proj.weight"),
        "mlp/router": Rule("mlp.gate.weight"),
        "mlp/bias": Rule("mlp.gate.e_score_correction_bias", "copy"),  # moe_bias state
    }
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        table[f"mlp/{ours}"] = Rule(f"mlp.{theirs}.weight")
        table[f"mlp/shared_experts/{ours}"] = Rule(f"mlp.shared_experts.{theirs}.weight")
        table[f"mlp/experts_{ours}"] = Rule(f"mlp.experts.{{e}}.{theirs}.weight")
    if sub not in table:
        raise KeyError(sub)
    return table[sub]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one of our leaves comes from: its rule and the HF layer index per stacked layer
    (None: not in a layer; a tuple: our leaf stacks those layers on axis 0 (scan_layers))."""

    rule: Rule
    layers: tuple[int, ...] | int | None


def placements(cfg: ModelConfig, tree: Any) -> Any:
    """A Placement for every leaf of a params, moe_bias or moe_hash tree (same structure);
    DeepSeek-V4's names are names_v4's."""
    L = cfg.num_hidden_layers
    v4 = cfg.attention == "v4"
    layer_rule = names_v4.layer_rule if v4 else _layer_rules
    offsets, first = {}, 0  # the first HF layer of each stack (dense, hash, moe: bottom up)
    for kind, n in layer_stacks(cfg):
        offsets[f"{kind}_layers"], first = first, first + n

    def place(path, leaf) -> Placement:
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[0] in (BIAS_COLLECTION, HASH_COLLECTION):
            keys = keys[1:]
        head, rest = keys[0], keys[1:]
        top = {
            "embed": Rule("model.embed_tokens.weight", "copy"),
            "final_norm": Rule("model.norm.weight", "copy"),
            "lm_head": Rule("lm_head.weight"),
        }
        if v4:
            top = names_v4.TOP
            head = "/".join(keys) if head == "hc_head" else head
        if head in top:
            return Placement(top[head], None)
        if head in offsets:
            offset = offsets[head]
            if rest[0] == "scan":  # scanned: one leaf stacks every layer of this kind
                n = leaf.shape[0]
                return Placement(layer_rule("/".join(rest[2:])), tuple(range(offset, offset + n)))
            return Placement(layer_rule("/".join(rest[1:])), offset + int(rest[0]))
        if head.startswith("mtp_"):  # mtp_{k}_<part>
            _, k, part = head.split("_", 2)
            layer = L + int(k) - 1
            if part == "layer":
                return Placement(_layer_rules("/".join(rest)), layer)
            rule = {
                "eh_proj": Rule("eh_proj.weight", "eh_proj"),
                "enorm": Rule("enorm.weight", "copy"),
                "hnorm": Rule("hnorm.weight", "copy"),
                "norm": Rule("shared_head.norm.weight", "copy"),
            }[part]
            return Placement(rule, layer)
        raise KeyError("/".join(keys))

    def safe_place(path, leaf):
        try:
            return place(path, leaf)
        except (KeyError, IndexError, ValueError) as e:
            where = jax.tree_util.keystr(path, simple=True, separator="/")
            raise ValueError(f"No Hugging Face name for parameter {where}") from e

    return jax.tree_util.tree_map_with_path(safe_place, tree)


def _tensor_name(rule: Rule, layer: int | None, expert: int | None = None) -> str:
    name = rule.name if expert is None else rule.name.format(e=expert)
    return name if layer is None else f"model.layers.{layer}.{name}"


def _hf_shape(rule: Rule, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The stored shape of one tensor for our per-layer (per-expert) shape."""
    if rule.kind in ("copy", "index"):
        return ours
    if rule.kind == "grouped":  # ours [G, in, out]
        return (ours[0] * ours[2], ours[1])
    if rule.kind == "flat":
        return (math.prod(ours),)
    if rule.kind == "eh_proj":
        return (ours[1], ours[0])
    return (math.prod(ours[rule.in_dims :]), math.prod(ours[: rule.in_dims]))


def _to_ours(rule: Rule, w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if rule.kind in ("copy", "flat", "index"):
        return w.reshape(ours)
    if rule.kind == "grouped":  # [G * out, in] -> [G, in, out]
        G, n_in, n_out = ours
        return w.reshape(G, n_out, n_in).transpose(0, 2, 1)
    if rule.kind == "eh_proj":  # [D, 2D] on [emb; h] -> [2D, D] on [h; emb]
        D = ours[1]
        return np.concatenate([w[:, D:].T, w[:, :D].T], axis=0)
    return w.T.reshape(ours)


def _to_hf(rule: Rule, w: np.ndarray) -> np.ndarray:
    if rule.kind == "copy":
        return w
    if rule.kind == "index":
        return w.astype(np.int64)
    if rule.kind == "grouped":  # [G, in, out] -> [G * out, in]
        return w.transpose(0, 2, 1).reshape(-1, w.shape[1])
    if rule.kind == "flat":
        return w.reshape(-1)
    if rule.kind == "eh_proj":
        D = w.shape[1]
        return np.concatenate([w[D:].T, w[:D].T], axis=1)
    n_in = math.prod(w.shape[: rule.in_dims])
    return w.reshape(n_in, -1).T
