"""DeepSeek-V4's config.json (transformers' DeepseekV4Config) <-> ModelConfig.

Every field DeepseekV4Config reads that changes the math is mapped or refused by name:
- The names of our V4 fields are HF's (layer_types, compress_rates, compress_rope_theta, hc_*,
  mlp_layer_types, swiglu_limit, sliding_window, o_groups, o_lora_rank, partial_rotary_factor,
  index_*); HF's legacy forms (compress_ratios, compress_rate_csa / _hca, num_hash_layers,
  qk_rope_head_dim) fold in as its `__post_init__` folds them.
- `rope_parameters` is {"main": sliding layers' rope, "compress": compressed layers' rope}, or a
  flat dict that applies to "compress" only (as HF nests it); "main" must be default rope, and
  "compress" default or YaRN at cos/sin scale 1 (`attention_factor` 1, which HF sets for the
  flat form and our V4 attention always uses).
- Every layer is MoE (no dense layers: first_k_dense_replace 0) with one shared expert of
  moe_intermediate_size, sqrtsoftplus scores and renormalised top-k gates (HF's V4 router
  always renormalises); no MTP is built (num_nextn_predict_layers is config-only in HF).
"""

from __future__ import annotations

import dataclasses

from moe_rl.models.config import ModelConfig

# config.json fields the V4 mapping reads ...
V4_READ_FIELDS = {
    "architectures", "vocab_size", "hidden_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "q_lora_rank",
    "num_experts_per_tok", "n_routed_experts", "n_shared_experts", "scoring_func",
    "norm_topk_prob", "routed_scaling_factor", "max_position_embeddings", "rope_theta",
    "layer_types", "compress_rates", "compress_rope_theta", "hc_mult", "hc_sinkhorn_iters",
    "hc_eps", "mlp_layer_types", "swiglu_limit", "sliding_window", "o_groups", "o_lora_rank",
    "index_n_heads", "index_head_dim", "index_topk", "num_nextn_predict_layers", "hidden_act",
    "rms_norm_eps", "tie_word_embeddings", "rope_parameters", "rope_scaling",
    "partial_rotary_factor", "mlp_bias", "quantization_config", "qk_rope_head_dim",
    "compress_ratios", "compress_rate_csa", "compress_rate_hca", "num_hash_layers",
}  # fmt: skip
# ... and those DeepseekV4ForCausalLM's forward never reads (training knobs, token ids,
# bookkeeping). Any other field is an error naming it.
V4_HARMLESS_FIELDS = {
    "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache", "bos_token_id",
    "eos_token_id", "pad_token_id", "attention_dropout", "attention_bias", "initializer_range",
    "output_router_logits", "router_aux_loss_coef", "router_jitter_noise", "_name_or_path",
    "return_dict", "output_attentions", "output_hidden_states", "is_encoder_decoder",
    "tokenizer_class",
}  # fmt: skip
# HF's legacy per-layer compress_ratios -> layer_types.
_RATIO_TO_TYPE = {
    0: "sliding_attention",
    4: "compressed_sparse_attention",
    128: "heavily_compressed_attention",
}


def _layer_types(hf: dict) -> list[str]:
    """HF's layer_types: explicit, else legacy per-layer compress_ratios, else V4-Pro's default
    (two HCA layers, then CSA / HCA interleaved)."""
    n = hf["num_hidden_layers"]
    if hf.get("layer_types") is not None:
        return list(hf["layer_types"])[:n]
    if hf.get("compress_ratios") is not None:
        return [_RATIO_TO_TYPE.get(r, f"compress_ratio={r}") for r in hf["compress_ratios"]][:n]
    interleave = [
        "compressed_sparse_attention" if i % 2 else "heavily_compressed_attention"
        for i in range(max(n - 2, 0))
    ]
    return ["heavily_compressed_attention"] * min(n, 2) + interleave


def _mlp_layer_types(hf: dict) -> list[str]:
    """HF's mlp_layer_types: explicit, else the first num_hash_layers (default 3) 'hash_moe'."""
    n = hf["num_hidden_layers"]
    if hf.get("mlp_layer_types") is not None:
        return list(hf["mlp_layer_types"])[:n]
    n_hash = hf.get("num_hash_layers", 3)
    return ["hash_moe"] * min(n, n_hash) + ["moe"] * max(0, n - n_hash)


def _compress_rates(hf: dict) -> dict:
    rates = dict(hf.get("compress_rates") or {})
    rates = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128, **rates}
    if hf.get("compress_rate_csa") is not None:
        rates["compressed_sparse_attention"] = hf["compress_rate_csa"]
    if hf.get("compress_rate_hca") is not None:
        rates["heavily_compressed_attention"] = hf["compress_rate_hca"]
    return rates


def _partial_rotary_factor(hf: dict) -> float:
    if hf.get("partial_rotary_factor") is not None:
        return float(hf["partial_rotary_factor"])
    if hf.get("qk_rope_head_dim") is not None:
        return hf["qk_rope_head_dim"] / hf["head_dim"]
    return 64 / 512


def _rope(hf: dict, factor: float, failed: list[str]) -> dict:
    """rope_theta, compress_rope_theta and rope_scaling (the compressed layers' YaRN) of HF's
    nested {"main", "compress"} rope_parameters or its flat form; problems go to `failed`."""
    rp = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if isinstance(rp.get("main"), dict) and isinstance(rp.get("compress"), dict):
        main, compress = dict(rp["main"]), dict(rp["compress"])
    else:
        flat = {k: v for k, v in rp.items() if k not in ("main", "compress")}
        flat.setdefault("rope_type", flat.pop("type", "default"))
        if flat["rope_type"] == "yarn":
            flat.setdefault("attention_factor", 1.0)
        main = dict(rope_type="default", rope_theta=hf.get("rope_theta", 10000.0))
        compress = {**flat, "rope_theta": hf.get("compress_rope_theta", 160000.0)}
    out = dict(
        rope_theta=float(main.get("rope_theta", hf.get("rope_theta", 10000.0))),
        compress_rope_theta=float(compress.get("rope_theta", hf.get("compress_rope_theta", 1.6e5))),
        rope_scaling=None,
    )
    for label, sub in (("main", main), ("compress", compress)):
        sub_factor = sub.get("partial_rotary_factor", factor)
        if sub_factor != factor:
            failed.append(
                f"rope_parameters.{label}.partial_rotary_factor={sub_factor!r} differs from "
                f"partial_rotary_factor={factor!r} (supported: equal)"
            )
    main_type = main.get("rope_type", main.get("type", "default"))
    if main_type != "default":
        failed.append(f"rope_parameters.main.rope_type={main_type!r} (supported: 'default')")
    kind = compress.get("rope_type", compress.get("type", "default"))
    if kind == "yarn":
        if compress.get("attention_factor") != 1.0:
            failed.append(
                f"rope_parameters.compress.attention_factor={compress.get('attention_factor')!r}"
                " (supported: 1.0, V4's YaRN keeps cos/sin unscaled)"
            )
        if not compress.get("truncate", True):
            failed.append("rope_parameters.compress.truncate=False (supported: true)")
        out["rope_scaling"] = dict(
            type="yarn",
            factor=float(compress["factor"]),
            original_max_position_embeddings=int(
                compress.get("original_max_position_embeddings")
                or hf.get("max_position_embeddings", 1048576)
            ),
            beta_fast=float(compress.get("beta_fast") or 32.0),
            beta_slow=float(compress.get("beta_slow") or 1.0),
        )
    elif kind != "default":
        failed.append(f"rope_parameters.compress.rope_type={kind!r} (supported: default, yarn)")
    return out


def v4_architecture_fields(hf: dict, where: str) -> dict:
    """ModelConfig fields of a DeepseekV4ForCausalLM config.json (HF's defaults where absent);
    one ValueError naming every unsupported field."""
    factor = _partial_rotary_factor(hf)
    failed = []
    checks = [
        ("hidden_act", hf.get("hidden_act", "silu") == "silu", "'silu'"),
        (
            "quantization_config",
            "quantization_config" not in hf,
            "absent (dequantize the weights to bf16/fp32 first)",
        ),
        ("mlp_bias", not hf.get("mlp_bias", False), "false"),
        ("tie_word_embeddings", not hf.get("tie_word_embeddings", False), "false for V4"),
        ("scoring_func", hf.get("scoring_func", "sqrtsoftplus") == "sqrtsoftplus", "sqrtsoftplus"),
        ("n_shared_experts", hf.get("n_shared_experts", 1) == 1, "1 (HF's V4 builds one)"),
    ]
    failed += [
        f"{k}={hf.get(k)!r} (supported: {ok_values})" for k, ok, ok_values in checks if not ok
    ]
    rope = _rope(hf, factor, failed)
    unknown = sorted(set(hf) - V4_READ_FIELDS - V4_HARMLESS_FIELDS)
    if unknown:
        failed.append(f"unknown field(s) {unknown}")
    if failed:
        raise ValueError(f"{where}/config.json: DeepseekV4ForCausalLM: " + "; ".join(failed))
    get = lambda name, default: hf[name] if hf.get(name) is not None else default
    return dict(
        attention="v4",
        vocab_size=hf["vocab_size"],
        hidden_size=get("hidden_size", 4096),
        intermediate_size=get("moe_intermediate_size", 2048),  # no dense layer reads it
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=get("num_attention_heads", 64),
        num_key_value_heads=get("num_key_value_heads", 1),
        head_dim=get("head_dim", 512),
        q_lora_rank=get("q_lora_rank", 1024),
        partial_rotary_factor=factor,
        sliding_window=get("sliding_window", 128),
        layer_types=_layer_types(hf),
        compress_rates=_compress_rates(hf),
        index_topk=get("index_topk", 512),
        index_n_heads=get("index_n_heads", 64),
        index_head_dim=get("index_head_dim", 128),
        o_groups=get("o_groups", 8),
        o_lora_rank=get("o_lora_rank", 1024),
        moe_intermediate_size=get("moe_intermediate_size", 2048),
        n_routed_experts=get("n_routed_experts", 256),
        n_shared_experts=1,
        num_experts_per_tok=get("num_experts_per_tok", 6),
        scoring_func="sqrtsoftplus",
        norm_topk_prob=True,  # HF's V4 routers always renormalise (norm_topk_prob unread)
        routed_scaling_factor=float(get("routed_scaling_factor", 1.5)),
        first_k_dense_replace=0,
        mlp_layer_types=_mlp_layer_types(hf),
        hc_mult=get("hc_mult", 4),
        hc_sinkhorn_iters=get("hc_sinkhorn_iters", 20),
        hc_eps=float(get("hc_eps", 1e-6)),
        swiglu_limit=float(get("swiglu_limit", 10.0)),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        max_position_embeddings=get("max_position_embeddings", 1048576),
        tie_word_embeddings=False,
        num_nextn_predict_layers=0,  # HF builds no MTP module for V4
        **rope,
    )


def v4_hf_config(cfg: ModelConfig, need) -> dict:
    """The DeepseekV4ForCausalLM config.json of a V4 ModelConfig; `need(ok, what)` raises
    naming a setting the format cannot express."""
    need(cfg.hc_mult > 0, "model.hc_mult=0 with attention='v4' (HF's V4 always has mHC)")
    need(cfg.is_moe, "model.n_routed_experts=0 with attention='v4' (every V4 layer is MoE)")
    need(
        cfg.first_k_dense_replace == 0,
        f"model.first_k_dense_replace={cfg.first_k_dense_replace} with attention='v4' "
        "(every V4 layer is MoE)",
    )
    need(cfg.n_shared_experts == 1, "model.n_shared_experts != 1 (HF's V4 builds one)")
    need(cfg.scoring_func == "sqrtsoftplus", f"model.scoring_func={cfg.scoring_func!r} with V4")
    need(cfg.norm_topk_prob, "model.norm_topk_prob=False (HF's V4 routers renormalise)")
    need(cfg.n_group == 1, "model.n_group > 1 (V4 routes without expert groups)")
    need(cfg.swiglu_limit > 0, "model.swiglu_limit=0 (HF's V4 always clips)")
    need(not cfg.tie_word_embeddings, "model.tie_word_embeddings=True with V4")
    rotary = dict(partial_rotary_factor=cfg.partial_rotary_factor)
    compress = dict(rope_type="default", rope_theta=cfg.compress_rope_theta, **rotary)
    if cfg.rope_scaling is not None:
        y = cfg.rope_scaling
        compress.update(
            rope_type="yarn",
            factor=y.factor,
            original_max_position_embeddings=y.original_max_position_embeddings,
            beta_fast=y.beta_fast,
            beta_slow=y.beta_slow,
            attention_factor=1.0,
        )
    main = dict(rope_type="default", rope_theta=cfg.rope_theta, **rotary)
    fields = {
        name: getattr(cfg, name)
        for name in (
            "vocab_size", "hidden_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "q_lora_rank",
            "num_experts_per_tok", "n_routed_experts", "n_shared_experts", "scoring_func",
            "norm_topk_prob", "routed_scaling_factor", "max_position_embeddings", "rope_theta",
            "compress_rope_theta", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "swiglu_limit",
            "sliding_window", "o_groups", "o_lora_rank", "index_n_heads", "index_head_dim",
            "index_topk", "partial_rotary_factor", "rms_norm_eps", "tie_word_embeddings",
        )
    }  # fmt: skip
    return dict(
        architectures=["DeepseekV4ForCausalLM"],
        model_type="deepseek_v4",
        layer_types=list(cfg.layer_types),
        compress_rates=dataclasses.asdict(cfg.compress_rates),
        mlp_layer_types=list(cfg.mlp_kinds),
        num_nextn_predict_layers=0,
        hidden_act="silu",
        rope_parameters=dict(main=main, compress=compress),
        torch_dtype=cfg.param_dtype,
        **fields,
    )
