"""config.json <-> ModelConfig: the architectures we read and write, their fields, and the
run-time choices a Hugging Face folder leaves to the run."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import ml_collections

from moe_rl.hf.config_v4 import v4_architecture_fields, v4_hf_config
from moe_rl.hf.reader import _Reader
from moe_rl.models.config import ModelConfig, model_config_dict

ARCHITECTURES = {
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV32ForCausalLM": "deepseek_v32",  # V3 + sparse attention (DSA)
    "DeepseekV4ForCausalLM": "deepseek_v4",  # hybrid attention, mHC, hash MoE (config_v4.py)
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}
# Fields of ModelConfig a run chooses, not the checkpoint (numerics, compilation, kernels).
RUNTIME_FIELDS = (
    "mla_absorb", "moe_impl", "attention_impl", "dtype", "param_dtype", "scan_layers", "remat",
)  # fmt: skip
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
    "routed_scaling_factor", "first_k_dense_replace", "moe_layer_freq", "mlp_layer_types",
    "index_topk", "index_n_heads", "index_head_dim",
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


def _dense_first(hf: dict, where: str) -> int:
    """DeepseekV32's dense-FFN layer count: its `mlp_layer_types` (default: the first
    first_k_dense_replace layers dense, the rest MoE) must be dense layers, then MoE ones."""
    L = hf["num_hidden_layers"]
    first = min(hf.get("first_k_dense_replace", 3), L)
    types = hf.get("mlp_layer_types") or ["dense"] * first + ["sparse"] * (L - first)
    n = types.count("dense")
    if len(types) != L or types != ["dense"] * n + ["sparse"] * (L - n):
        raise _unsupported(
            where,
            f"mlp_layer_types={types} is not supported: {L} entries, 'dense' layers first, "
            "then 'sparse' (MoE) ones",
        )
    return n


def architecture_fields(hf: dict, where: str = "<folder>") -> dict:
    """ModelConfig fields (architecture only) of a Hugging Face config.json dict."""
    archs = hf.get("architectures") or []
    family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if family is None:
        raise _unsupported(
            where, f"architectures={archs} is not supported; supported: {sorted(ARCHITECTURES)}"
        )
    if family == "deepseek_v4":
        return v4_architecture_fields(hf, where)
    checks = [
        ("hidden_act", hf.get("hidden_act", "silu") == "silu", "'silu'"),
        (
            "quantization_config",
            "quantization_config" not in hf,
            "absent (dequantize the weights to bf16/fp32 first)",
        ),
        ("mlp_bias", not hf.get("mlp_bias", False), "false"),
        ("use_sliding_window", not hf.get("use_sliding_window", False), "false"),
        ("moe_layer_freq", hf.get("moe_layer_freq", 1) == 1, "1"),
    ]
    deepseek = family.startswith("deepseek")
    if deepseek:
        checks.append(("attention_bias", not hf.get("attention_bias", False), "false for MLA"))
    elif family == "llama":
        checks.append(
            (
                "attention_bias",
                not hf.get("attention_bias", False),
                "false (Llama's bias includes o_proj)",
            )
        )
    failed = [f"{k}={hf.get(k)!r} (supported: {allowed})" for k, ok, allowed in checks if not ok]
    unknown = sorted(set(hf) - READ_FIELDS - HARMLESS_FIELDS)
    if unknown:
        failed.append(f"unknown field(s) {unknown}")
    if failed:
        raise _unsupported(where, f"{archs[0]}: " + "; ".join(failed))

    sparse = family == "deepseek_v32"
    if sparse:
        dense_first = _dense_first(hf, where)
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
    if sparse:  # transformers' DeepseekV32Config defaults
        f.update(
            index_topk=int(hf.get("index_topk", 2048)),
            index_n_heads=int(hf.get("index_n_heads", 64)),
            index_head_dim=int(hf.get("index_head_dim", 128)),
        )
        hf = {**hf, "first_k_dense_replace": dense_first}
    if (
        not hf.get("n_routed_experts")
        or hf.get("first_k_dense_replace", 0) >= f["num_hidden_layers"]
    ):
        return f  # every layer dense
    v3 = family in ("deepseek_v3", "deepseek_v32")  # V3.2 routes as V3 does
    method = hf.get("topk_method", "noaux_tc" if v3 else "greedy")
    scoring = hf.get("scoring_func", "sigmoid" if v3 else "softmax")
    allowed = (
        {"noaux_tc": "sigmoid"} if v3 else {"greedy": "softmax", "group_limited_greedy": "softmax"}
    )
    if allowed.get(method) != scoring:
        raise _unsupported(
            where,
            f"topk_method={method!r} with scoring_func={scoring!r} is not supported for "
            f"{archs[0]}; supported: {allowed}",
        )
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
    run-time choices (RUNTIME_FIELDS) of `model`, as given: 'auto' is resolved by the run
    (its backend and mesh), not here."""
    runtime = {k: model[k] for k in RUNTIME_FIELDS if k in model}
    return model_config_dict(**{**_fields_of(model_config(folder, **runtime)), **runtime})


def _fields_of(cfg: ModelConfig) -> dict:
    fields = dataclasses.asdict(cfg)
    if cfg.rope_scaling is not None:
        fields["rope_scaling"] = dict(type="yarn", **dataclasses.asdict(cfg.rope_scaling))
    else:
        fields.pop("rope_scaling")
    return fields


def hf_config(cfg: ModelConfig) -> dict:
    """The config.json of our model: DeepseekV3 for MLA models (DeepseekV2 with softmax
    routing, DeepseekV32 with sparse attention), DeepseekV4 for attention='v4', Qwen2 (q/k/v
    biases) or Llama for GQA ones. Raises ValueError naming a setting the format cannot
    express."""

    def need(ok: bool, what: str):
        if not ok:
            raise ValueError(f"Cannot export to Hugging Face format: {what}")

    if cfg.attention == "v4":
        return v4_hf_config(cfg, need)
    need(
        cfg.hc_mult == 0
        and not cfg.swiglu_limit
        and cfg.scoring_func != "sqrtsoftplus"
        and "hash_moe" not in cfg.mlp_kinds,
        "DeepSeek-V4 block features (model.hc_mult, swiglu_limit, sqrtsoftplus, hash_moe "
        "layers) without model.attention='v4'",
    )

    fields = lambda *names: {name: getattr(cfg, name) for name in names}
    common = fields(
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "rope_theta",
    )
    common.update(hidden_act="silu", torch_dtype=cfg.param_dtype)
    if cfg.rope_scaling is not None:
        common["rope_scaling"] = dict(type="yarn", **dataclasses.asdict(cfg.rope_scaling))
    if cfg.attention == "gqa":
        need(not cfg.is_moe, "a GQA model with routed experts (no Qwen2/Llama equivalent)")
        need(
            not cfg.rope_interleave,
            "model.rope_interleave=True with GQA (Qwen2/Llama rotate halves)",
        )
        arch = "Qwen2ForCausalLM" if cfg.attention_bias else "LlamaForCausalLM"
        return dict(
            architectures=[arch],
            model_type="qwen2" if cfg.attention_bias else "llama",
            num_key_value_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            attention_bias=False,
            **common,
        )
    need(
        cfg.n_shared_experts > 0 or not cfg.is_moe,
        "model.n_shared_experts=0 (DeepSeek MoE layers always have shared experts)",
    )
    v2 = cfg.is_moe and cfg.scoring_func == "softmax"  # DeepSeek-V2 routing
    moe = fields(
        "moe_intermediate_size",
        "n_routed_experts",
        "n_shared_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "routed_scaling_factor",
        "norm_topk_prob",
        "scoring_func",
        "first_k_dense_replace",
    )
    moe["topk_method"] = "noaux_tc"
    if not cfg.is_moe:  # every layer dense (n_routed_experts keeps the format's default)
        moe = dict(first_k_dense_replace=cfg.num_hidden_layers, moe_intermediate_size=1)
    mla = fields(
        "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"
    )
    mla.update(num_key_value_heads=cfg.num_attention_heads, attention_bias=False)
    need(
        not (v2 and cfg.index_topk),
        "model.index_topk > 0 with softmax routing (DeepseekV32 routes by sigmoid)",
    )
    if v2:
        need(
            not cfg.norm_topk_prob,
            "model.norm_topk_prob=True with softmax routing "
            "(transformers' DeepseekV2 never renormalises the gates)",
        )
        need(cfg.rope_interleave, "model.rope_interleave=False (DeepseekV2 rotates pairs)")
        moe["topk_method"] = "greedy" if cfg.n_group == 1 else "group_limited_greedy"
        return dict(
            architectures=["DeepseekV2ForCausalLM"],
            model_type="deepseek_v2",
            **mla,
            **moe,
            **common,
        )
    if cfg.index_topk:  # sparse attention: DeepSeek-V3.2
        need(cfg.rope_interleave, "model.rope_interleave=False (DeepseekV32 rotates pairs)")
        return dict(
            architectures=["DeepseekV32ForCausalLM"],
            model_type="deepseek_v32",
            index_topk=cfg.index_topk,
            index_n_heads=cfg.index_n_heads,
            index_head_dim=cfg.index_head_dim,
            num_nextn_predict_layers=cfg.num_nextn_predict_layers,
            **mla,
            **moe,
            **common,
        )
    return dict(
        architectures=["DeepseekV3ForCausalLM"],
        model_type="deepseek_v3",
        rope_interleave=cfg.rope_interleave,
        num_nextn_predict_layers=cfg.num_nextn_predict_layers,
        **mla,
        **moe,
        **common,
    )
