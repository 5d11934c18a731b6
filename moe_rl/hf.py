"""Hugging Face checkpoints in and out: DeepSeek-V3/V2 (MLA + DeepSeekMoE), Qwen2 and Llama.

A Hugging Face model folder (config.json + *.safetensors + tokenizer.json) can stand wherever
a run reads a model (`config.init_checkpoint`, `config.checkpoint`):

    cfg = hf.model_config(folder)                           # config.json -> ModelConfig
    params, state = hf.load_params(folder, cfg, shardings)  # safetensors -> our pytrees
    hf.save_pretrained(out, cfg, params, state, tokenizer)  # and back, for transformers

Conventions mapped exactly:
- Linear weights are [out, in] in torch, [in, ...heads] here: transposed, then reshaped.
- Routed experts `mlp.experts.{j}.*_proj` are stacked on our leading expert axis; the router
  `mlp.gate.weight` is [E, D]; DeepSeek-V3's `e_score_correction_bias` is our `moe_bias`
  state (selection only, never the gate values), so balancing continues from it.
- RoPE: DeepSeek rotates interleaved pairs (x0, x1), (x2, x3)... (`rope_interleave`, default
  true in V3; always in V2's complex form); Qwen2/Llama rotate halves (x_i, x_{i+d/2}). Our
  `rope_interleave` selects the same rotation, so no weight is permuted.
- YaRN: `rope_scaling`/`rope_parameters` of type yarn with DeepSeek's mscale/mscale_all_dim;
  without mscale_all_dim transformers ignores mscale, and so do we.
- Multi-token prediction: DeepSeek-V3's MTP module is stored as extra layers after the last
  one (`model.layers.{L+k-1}`: enorm, hnorm, eh_proj acting on [emb; h], shared_head.norm).
  It is read when present (transformers drops it, so its folders have none) and written for
  DeepseekV3 exports.

Loading streams tensor by tensor: every parameter is built by `jax.make_array_from_callback`
for the slices its devices hold, reading only the stored tensors those slices cover (an expert
shard reads only its experts, a slice of a scanned stack only its layers), cast to the
configured `model.param_dtype`. Missing, unexpected or misshapen tensors are one ValueError
that names each of them, raised before anything is read.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, model_config_dict
from moe_rl.models.moe import BIAS_COLLECTION

ARCHITECTURES = {
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}
# Fields of ModelConfig a run chooses, not the checkpoint (numerics, compilation, kernels).
RUNTIME_FIELDS = ("mla_absorb", "moe_impl", "dtype", "param_dtype", "scan_layers", "remat")
# config.json fields the mapping reads (and checks where only some values are supported) ...
READ_FIELDS = {
    "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "max_position_embeddings", "tie_word_embeddings", "rope_theta", "rope_scaling",
    "rope_parameters", "rope_interleave", "hidden_act", "attention_bias", "mlp_bias",
    "use_sliding_window", "quantization_config", "q_lora_rank", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "num_nextn_predict_layers",
    "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
    "n_group", "topk_group", "topk_method", "scoring_func", "norm_topk_prob",
    "routed_scaling_factor", "first_k_dense_replace", "moe_layer_freq",
}  # fmt: skip
# ... and those that do not change the forward pass (training-time knobs, token ids,
# bookkeeping, values derived from read ones). Any other field is an error naming it.
HARMLESS_FIELDS = {
    "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "initializer_range",
    "pretraining_tp", "output_router_logits", "aux_loss_alpha", "seq_aux", "ep_size",
    "router_aux_loss_coef", "max_window_layers", "sliding_window", "layer_types", "qk_head_dim",
    "_name_or_path", "return_dict", "output_attentions", "output_hidden_states",
    "is_encoder_decoder", "tokenizer_class", "use_mla",
}  # fmt: skip
# Stored tensors that are not weights (buffers some exporters write).
NON_WEIGHTS = ("rotary_emb.inv_freq",)


def is_hf_folder(path: str) -> bool:
    """A folder with config.json and safetensors weights (a Hugging Face model)."""
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "config.json"))
        and bool(glob.glob(os.path.join(path, "*.safetensors")))
    )


def read_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def _unsupported(path: str, what: str) -> ValueError:
    return ValueError(f"{path}/config.json: {what}")


def _rope(hf: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling dict or None) from the old (rope_theta + rope_scaling) or
    the transformers-5 (rope_parameters) layout."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", scaling.pop("rope_theta", 1e4))))
    merged = {**scaling, **params}
    kind = merged.pop("rope_type", merged.pop("type", "default")) or "default"
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise _unsupported(where, f"rope type {kind!r} is not supported (default, yarn)")
    mscale_all_dim = float(merged.get("mscale_all_dim") or 0.0)
    return theta, dict(
        type="yarn",
        factor=float(merged["factor"]),
        original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        beta_fast=float(merged.get("beta_fast") or 32.0),
        beta_slow=float(merged.get("beta_slow") or 1.0),
        # transformers uses mscale only together with mscale_all_dim (else 0.1 ln(s) + 1).
        mscale=float(merged.get("mscale") or 1.0) if mscale_all_dim else 1.0,
        mscale_all_dim=mscale_all_dim,
    )


def architecture_fields(hf: dict, where: str = "<folder>") -> dict:
    """ModelConfig fields (architecture only) of a Hugging Face config.json dict."""
    archs = hf.get("architectures") or []
    family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if family is None:
        raise _unsupported(
            where, f"architectures={archs} is not supported; supported: {sorted(ARCHITECTURES)}"
        )
    checks = [
        ("hidden_act", hf.get("hidden_act", "silu") == "silu", "'silu'"),
        ("quantization_config", "quantization_config" not in hf,
         "absent (dequantize the weights to bf16/fp32 first)"),
        ("mlp_bias", not hf.get("mlp_bias", False), "false"),
        ("use_sliding_window", not hf.get("use_sliding_window", False), "false"),
        ("moe_layer_freq", hf.get("moe_layer_freq", 1) == 1, "1"),
    ]  # fmt: skip
    deepseek = family.startswith("deepseek")
    if deepseek:
        checks.append(("attention_bias", not hf.get("attention_bias", False), "false for MLA"))
    elif family == "llama":
        checks.append(("attention_bias", not hf.get("attention_bias", False),
                       "false (Llama's bias includes o_proj)"))  # fmt: skip
    failed = [f"{k}={hf.get(k)!r} (supported: {allowed})" for k, ok, allowed in checks if not ok]
    unknown = sorted(set(hf) - READ_FIELDS - HARMLESS_FIELDS)
    if unknown:
        failed.append(f"unknown field(s) {unknown}")
    if failed:
        raise _unsupported(where, f"{archs[0]}: " + "; ".join(failed))

    theta, rope_scaling = _rope(hf, where)
    f = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf.get("intermediate_size", 0),
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=rope_scaling,
    )
    if not deepseek:
        heads = hf["num_attention_heads"]
        f.update(
            attention="gqa",
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            attention_bias=family == "qwen2",  # Qwen2: q/k/v biases, no o_proj bias
            rope_interleave=False,
        )
        return f
    f.update(
        attention="mla",
        q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"],
        rope_interleave=bool(hf.get("rope_interleave", True)) if family == "deepseek_v3" else True,
        num_nextn_predict_layers=int(hf.get("num_nextn_predict_layers") or 0),
    )
    if (
        not hf.get("n_routed_experts")
        or hf.get("first_k_dense_replace", 0) >= f["num_hidden_layers"]
    ):
        return f  # every layer dense
    v3 = family == "deepseek_v3"
    method = hf.get("topk_method", "noaux_tc" if v3 else "greedy")
    scoring = hf.get("scoring_func", "sigmoid" if v3 else "softmax")
    allowed = (
        {"noaux_tc": "sigmoid"} if v3 else {"greedy": "softmax", "group_limited_greedy": "softmax"}
    )
    if allowed.get(method) != scoring:
        raise _unsupported(
            where, f"topk_method={method!r} with scoring_func={scoring!r} is not supported for "
            f"{archs[0]}; supported: {allowed}"
        )  # fmt: skip
    grouped = v3 or method == "group_limited_greedy"
    f.update(
        moe_intermediate_size=hf["moe_intermediate_size"],
        n_routed_experts=hf["n_routed_experts"],
        n_shared_experts=hf.get("n_shared_experts") or 0,
        num_experts_per_tok=hf["num_experts_per_tok"],
        n_group=(hf.get("n_group") or 1) if grouped else 1,
        topk_group=(hf.get("topk_group") or 1) if grouped else 1,
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        scoring_func=scoring,
        # transformers' DeepseekV2 never renormalises the top-k gates.
        norm_topk_prob=bool(hf.get("norm_topk_prob", v3)) if v3 else False,
        first_k_dense_replace=hf.get("first_k_dense_replace", 0),
    )
    return f


def model_config(folder: str, **runtime) -> ModelConfig:
    """The ModelConfig of a Hugging Face folder; `runtime` sets RUNTIME_FIELDS (e.g. dtype).

    `num_nextn_predict_layers` counts the MTP layers actually stored (transformers saves
    none, whatever config.json says).
    """
    fields = architecture_fields(read_config(folder), folder)
    if fields.get("num_nextn_predict_layers"):
        stored = _Reader(folder).keys
        L = fields["num_hidden_layers"]
        depth = 0
        while f"model.layers.{L + depth}.eh_proj.weight" in stored:
            depth += 1
        fields["num_nextn_predict_layers"] = depth
    unknown = sorted(set(runtime) - set(RUNTIME_FIELDS))
    if unknown:
        raise ValueError(f"{unknown} are not run-time model fields; allowed: {RUNTIME_FIELDS}")
    return ModelConfig.from_config(model_config_dict(**fields, **runtime))


def with_hf_model(config: ml_collections.ConfigDict, key: str = "init_checkpoint"):
    """`config` with its model block replaced by the architecture of the Hugging Face folder
    named by `config.<key>` (the run's dtype, scan, remat and kernel choices are kept); the
    config itself when `config.<key>` is not such a folder."""
    folder = config.get(key)
    if not is_hf_folder(folder):
        return config
    out = ml_collections.ConfigDict(config.to_dict())
    out.model = model_block(folder, config.model)
    return out


def model_block(folder: str, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A model config block with the architecture of the Hugging Face `folder` and the
    run-time choices (RUNTIME_FIELDS) of `model`."""
    runtime = {k: model[k] for k in RUNTIME_FIELDS if k in model}
    return model_config_dict(**_fields_of(model_config(folder, **runtime)))


def _fields_of(cfg: ModelConfig) -> dict:
    fields = dataclasses.asdict(cfg)
    if cfg.rope_scaling is not None:
        fields["rope_scaling"] = dict(type="yarn", **dataclasses.asdict(cfg.rope_scaling))
    else:
        fields.pop("rope_scaling")
    return fields


# ----------------------------------------------------------------------------------------------
# Tensor names: our parameter paths <-> Hugging Face tensors.


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one of our (per-layer) parameters is stored in Hugging Face form.

    `name` may hold '{e}' (one tensor per routed expert, stacked on our axis 0). kind:
    'linear': a torch [out, in] weight; ours is [*in, *out] with the first `in_dims` axes the
    input (o_proj: [heads, v_dim, D], in_dims=2), i.e. the transpose, reshaped;
    'copy': the same array; 'flat': the same numbers stored flat (q/k/v biases [heads, dim]);
    'eh_proj': MTP's [D, 2D] acting on [emb; h], ours is [2D, D] acting on [h; emb].
    """

    name: str
    kind: str = "linear"
    in_dims: int = 1


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
    """A Placement for every leaf of a params or moe_bias tree (same structure)."""
    L = cfg.num_hidden_layers

    def place(path, leaf) -> Placement:
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[0] == BIAS_COLLECTION:
            keys = keys[1:]
        head, rest = keys[0], keys[1:]
        top = {
            "embed": Rule("model.embed_tokens.weight", "copy"),
            "final_norm": Rule("model.norm.weight", "copy"),
            "lm_head": Rule("lm_head.weight"),
        }
        if head in top:
            return Placement(top[head], None)
        if head in ("dense_layers", "moe_layers"):
            offset = 0 if head == "dense_layers" else cfg.num_dense_layers
            if rest[0] == "scan":  # scanned: one leaf stacks every layer of this kind
                n = leaf.shape[0]
                return Placement(_layer_rules("/".join(rest[2:])), tuple(range(offset, offset + n)))
            return Placement(_layer_rules("/".join(rest[1:])), offset + int(rest[0]))
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
    if rule.kind == "copy":
        return ours
    if rule.kind == "flat":
        return (math.prod(ours),)
    if rule.kind == "eh_proj":
        return (ours[1], ours[0])
    return (math.prod(ours[rule.in_dims :]), math.prod(ours[: rule.in_dims]))


def _to_ours(rule: Rule, w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if rule.kind in ("copy", "flat"):
        return w.reshape(ours)
    if rule.kind == "eh_proj":  # [D, 2D] on [emb; h] -> [2D, D] on [h; emb]
        D = ours[1]
        return np.concatenate([w[:, D:].T, w[:, :D].T], axis=0)
    return w.T.reshape(ours)


def _to_hf(rule: Rule, w: np.ndarray) -> np.ndarray:
    if rule.kind == "copy":
        return w
    if rule.kind == "flat":
        return w.reshape(-1)
    if rule.kind == "eh_proj":
        D = w.shape[1]
        return np.concatenate([w[D:].T, w[:D].T], axis=1)
    n_in = math.prod(w.shape[: rule.in_dims])
    return w.reshape(n_in, -1).T


# ----------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Lazy access to the tensors of every safetensors file in a folder."""

    def __init__(self, folder: str):
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not files:
            raise ValueError(f"{folder}: no *.safetensors files")
        self.folder = folder
        self.where: dict[str, str] = {}
        self._open: dict[str, Any] = {}
        for file in files:
            with safe_open(file, "np") as f:
                for key in f.keys():
                    self.where[key] = file
        self.keys = set(self.where)

    def _file(self, key: str):
        file = self.where[key]
        if file not in self._open:
            self._open[file] = safe_open(file, "np")
        return self._open[file]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file(key).get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._file(key).get_tensor(key)


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


def load_params(folder: str, cfg: ModelConfig, shardings: tuple | None = None):
    """(params, model_state) of `cfg`'s model from the folder's safetensors.

    `shardings`: optional (params, model_state) trees of NamedShardings (e.g. from
    `sharding.model_shardings`); each array is created directly in its sharding from the
    slices its devices need. Parameters are cast to `cfg.param_dtype`, the routing bias stays
    float32 (zeros when the checkpoint has none, e.g. DeepSeek-V2's softmax routing).
    """
    reader = _Reader(folder)
    abstract_params, abstract_state = jax.eval_shape(
        lambda: transformer.init(cfg, jax.random.key(0))
    )
    param_places = placements(cfg, abstract_params)
    needed = _expected(cfg, abstract_params, param_places)
    state_places = placements(cfg, abstract_state) if abstract_state else {}
    bias_stored = any(k.endswith("e_score_correction_bias") for k in reader.keys)
    if bias_stored:
        needed.update(_expected(cfg, abstract_state, state_places))
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
    state = load(abstract_state, state_places, shardings[1], bias_stored) if abstract_state else {}
    logging.info("Loaded %d tensors from %s", len(needed), folder)
    return params, state


# ----------------------------------------------------------------------------------------------
# Writing


def hf_config(cfg: ModelConfig) -> dict:
    """The config.json of our model: DeepseekV3 for MLA models (DeepseekV2 with softmax
    routing), Qwen2 (q/k/v biases) or Llama for GQA ones. Raises ValueError naming a setting
    the format cannot express."""

    def need(ok: bool, what: str):
        if not ok:
            raise ValueError(f"Cannot export to Hugging Face format: {what}")

    fields = lambda *names: {name: getattr(cfg, name) for name in names}
    common = fields(
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
        "rope_theta",
    )  # fmt: skip
    common.update(hidden_act="silu", torch_dtype=cfg.param_dtype)
    if cfg.rope_scaling is not None:
        common["rope_scaling"] = dict(type="yarn", **dataclasses.asdict(cfg.rope_scaling))
    if cfg.attention == "gqa":
        need(not cfg.is_moe, "a GQA model with routed experts (no Qwen2/Llama equivalent)")
        need(not cfg.rope_interleave, "model.rope_interleave=True with GQA (Qwen2/Llama rotate "
             "halves)")  # fmt: skip
        arch = "Qwen2ForCausalLM" if cfg.attention_bias else "LlamaForCausalLM"
        return dict(
            architectures=[arch],
            model_type="qwen2" if cfg.attention_bias else "llama",
            num_key_value_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            attention_bias=False,
            **common,
        )
    need(cfg.n_shared_experts > 0 or not cfg.is_moe, "model.n_shared_experts=0 (DeepSeek "
         "MoE layers always have shared experts)")  # fmt: skip
    v2 = cfg.is_moe and cfg.scoring_func == "softmax"  # DeepSeek-V2 routing
    moe = fields(
        "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
        "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "scoring_func",
        "first_k_dense_replace",
    )  # fmt: skip
    moe["topk_method"] = "noaux_tc"
    if not cfg.is_moe:  # every layer dense (n_routed_experts keeps the format's default)
        moe = dict(first_k_dense_replace=cfg.num_hidden_layers, moe_intermediate_size=1)
    mla = fields(
        "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"
    )
    mla.update(num_key_value_heads=cfg.num_attention_heads, attention_bias=False)
    if v2:
        need(not cfg.norm_topk_prob, "model.norm_topk_prob=True with softmax routing "
             "(transformers' DeepseekV2 never renormalises the gates)")  # fmt: skip
        need(cfg.rope_interleave, "model.rope_interleave=False (DeepseekV2 rotates pairs)")
        moe["topk_method"] = "greedy" if cfg.n_group == 1 else "group_limited_greedy"
        return dict(architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
                    **mla, **moe, **common)  # fmt: skip
    return dict(
        architectures=["DeepseekV3ForCausalLM"],
        model_type="deepseek_v3",
        rope_interleave=cfg.rope_interleave,
        num_nextn_predict_layers=cfg.num_nextn_predict_layers,
        **mla,
        **moe,
        **common,
    )


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

    MTP layers are written for DeepseekV3 (as DeepSeek stores them; transformers lists them as
    unexpected and ignores them) unless `mtp=False`, e.g. for serving; Qwen2/Llama/DeepseekV2
    have no MTP, so the module is left out (with a warning).
    """
    config = hf_config(cfg)
    with_mtp = mtp and config["model_type"] == "deepseek_v3"
    if config["model_type"] == "deepseek_v2":  # no correction bias in V2's format
        if state and any(np.any(np.asarray(b) != 0) for b in jax.tree.leaves(state)):
            raise ValueError(
                "Cannot export to Hugging Face format: DeepseekV2 (softmax routing)"
                " has no routing bias, and this model's moe_bias is not zero"
            )
        state = {}
    if cfg.num_nextn_predict_layers and not with_mtp:
        if mtp:
            logging.warning("%s has no multi-token prediction: the MTP module is not exported",
                            config["architectures"][0])  # fmt: skip
        if "num_nextn_predict_layers" in config:
            config["num_nextn_predict_layers"] = 0
    if tokenizer is not None and getattr(tokenizer, "path", None):
        config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                      pad_token_id=tokenizer.pad_id)  # fmt: skip
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


def load_pretrained(folder: str, shardings: tuple | None = None, **runtime):
    """(cfg, params, model_state) of a Hugging Face folder; see `model_config`, `load_params`."""
    cfg = model_config(folder, **runtime)
    params, state = load_params(folder, cfg, shardings)
    return cfg, params, state
