"""Model configuration: Hugging Face DeepSeek-V3 field names, validated before anything is built.

Experiments hold the model as an `ml_collections.ConfigDict` (so any field can be overridden on
the command line); `ModelConfig.from_config` turns it into a frozen, hashable dataclass that the
Flax modules take as a static attribute, after checking every field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from moe_rl.models.backend import ATTENTION_IMPLS, AUTO, MOE_IMPLS, resolve_impls

ATTENTION_KINDS = ("mla", "gqa", "v4")  # v4: DeepSeek-V4 hybrid attention (compressed_attention)
SCORING_FUNCS = ("sigmoid", "softmax", "sqrtsoftplus")  # sqrtsoftplus: DeepSeek-V4
ROPE_SCALING_TYPES = ("none", "yarn")
DTYPES = ("float32", "bfloat16", "float16")
# DeepSeek-V4 block: per-layer MLP kinds (HF DEEPSEEK_V4_MLP_LAYER_TYPES) and HF's default number
# of leading hash-routed layers (DeepseekV4Config.default_num_hash_layers).
MLP_LAYER_TYPES = ("hash_moe", "moe")
V4_NUM_HASH_LAYERS = 3


@dataclasses.dataclass(frozen=True)
class YarnConfig:
    """YaRN context extension (Peng et al. 2023), with DeepSeek's mscale / mscale_all_dim."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


# DeepSeek-V4 attention: the per-layer kinds of transformers' DeepseekV4Config.layer_types.
V4_LAYER_TYPES = (
    "sliding_attention",
    "compressed_sparse_attention",
    "heavily_compressed_attention",
)


@dataclasses.dataclass(frozen=True)
class CompressRates:
    """DeepSeek-V4's tokens per compressed KV entry, by layer type (HF `compress_rates`)."""

    compressed_sparse_attention: int = 4
    heavily_compressed_attention: int = 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every knob of the decoder; names follow HF `DeepseekV3Config` where one exists."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense FFN width (first_k_dense_replace layers, dense models)
    num_hidden_layers: int
    num_attention_heads: int
    attention: str = "mla"  # 'mla' (DeepSeek-V2/V3) or 'gqa' (Qwen2/Llama-like dense students)
    # MLA
    q_lora_rank: int | None = None  # None: no query compression (DeepSeek-V2-Lite)
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    mla_absorb: bool = True  # decode from the cache with the absorbed (latent-space) path
    # Attention kernel (backend.ATTENTION_IMPLS): 'xla' (einsum), 'dot_product_attention' or
    # 'cudnn' (jax.nn.dot_product_attention, full forward); 'auto' by backend (models/backend.py).
    attention_impl: str = AUTO
    # DeepSeek Sparse Attention (DeepSeek-V3.2, arXiv 2512.02556 sec. 2.1): a lightning indexer
    # of index_n_heads heads of index_head_dim scores the keys of each query, which attends to
    # its index_topk best only. index_topk 0 (or None): dense MLA, no indexer.
    index_topk: int = 0
    index_n_heads: int = 0
    index_head_dim: int = 0
    # GQA
    num_key_value_heads: int = 0
    head_dim: int = 0
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    # DeepSeek-V4 attention (attention='v4'; models/compressed_attention.py). One key=value head
    # of head_dim (num_key_value_heads=1) read by num_attention_heads query heads from the
    # q_lora_rank latent; the last head_dim * partial_rotary_factor features are rotated.
    # layer_types[i] (one of V4_LAYER_TYPES) is layer i's kind: every kind attends to the last
    # sliding_window tokens; compressed_sparse_attention also to its index_topk best KV entries
    # (one per compress_rates.compressed_sparse_attention tokens, chosen by a lightning indexer
    # of index_n_heads x index_head_dim), heavily_compressed_attention to every entry (one per
    # compress_rates.heavily_compressed_attention tokens). Compressed layers rotate with
    # compress_rope_theta (and rope_scaling), sliding ones with rope_theta. Heads are projected
    # out in o_groups groups, each to o_lora_rank features, then mixed to hidden_size.
    layer_types: tuple[str, ...] = ()
    compress_rates: CompressRates = CompressRates()
    compress_rope_theta: float = 160000.0
    sliding_window: int = 128
    o_groups: int = 0
    o_lora_rank: int = 0
    partial_rotary_factor: float = 0.125  # HF's default: 64 rotated of head_dim 512
    # MoE
    moe_intermediate_size: int = 0
    n_routed_experts: int = 0  # 0: dense FFN in every layer
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 0
    moe_impl: str = AUTO  # 'sparse', 'dense' or 'ragged' (models/dispatch.py); 'auto' by backend
    # DeepSeek-V4 block (mHC, hash MoE, router); names of HF `DeepseekV4Config`. The router's
    # scoring_func='sqrtsoftplus' (V4 sec. 2.1) is set above.
    # mHC (V4 sec. 2.2): hc_mult residual streams mixed by manifold-constrained hyper-connections
    # (models/hyper_connections.py); 0: the plain residual stream of DeepSeek-V3.
    hc_mult: int = 0
    hc_sinkhorn_iters: int = 20  # Sinkhorn-Knopp iterations projecting the mixing matrix
    hc_eps: float = 1e-6  # floor added to the pre/comb weights and the Sinkhorn denominators
    # Per layer 'moe' (learned top-k) or 'hash_moe' (experts from a frozen token-id table, V4
    # sec. 2.1). (): HF's default (the first V4_NUM_HASH_LAYERS layers 'hash_moe') when
    # hc_mult > 0, else every MoE layer 'moe' (DeepSeek-V3). Layers before
    # first_k_dense_replace stay dense either way; see `ModelConfig.mlp_kinds`.
    mlp_layer_types: tuple[str, ...] = ()
    # Clip the experts' (routed and shared) SwiGLU pre-activations: gate to (-inf, limit],
    # up to [-limit, limit] (HF DeepseekV4Experts / DeepseekV4MLP). 0 (or None): no clipping.
    swiglu_limit: float = 0.0
    # Positions, norms, head
    rope_theta: float = 10000.0
    rope_scaling: YarnConfig | None = None
    rope_interleave: bool = True  # DeepSeek rotates interleaved pairs; Qwen2/Llama rotate halves
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    max_position_embeddings: int = 4096
    # Multi-token prediction depth D (DeepSeek-V3 sec. 2.2); 0 disables it.
    num_nextn_predict_layers: int = 0
    # Numerics and compilation
    dtype: str = AUTO  # activations / matmuls; 'auto': bfloat16 on GPU/TPU, float32 on CPU
    param_dtype: str = "float32"  # master weights
    scan_layers: bool = False  # lax.scan over identical layers: compile time flat in depth
    remat: bool = False  # rematerialise each layer in the backward pass

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_hidden_layers if not self.is_moe else self.first_k_dense_replace

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.num_dense_layers

    @property
    def mlp_kinds(self) -> tuple[str, ...]:
        """Each layer's FFN: 'dense', 'moe' or 'hash_moe' (DeepSeek-V4; see mlp_layer_types)."""
        kinds = self.mlp_layer_types
        if not kinds:
            n_hash = V4_NUM_HASH_LAYERS if self.hc_mult > 0 else 0
            kinds = ["hash_moe" if i < n_hash else "moe" for i in range(self.num_hidden_layers)]
        return tuple("dense" if i < self.num_dense_layers else k for i, k in enumerate(kinds))

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def v4_rope_dim(self) -> int:
        """DeepSeek-V4: the rotated (trailing) features of each head, as HF's qk_rope_head_dim."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_config(
        cls,
        cfg: ml_collections.ConfigDict | dict,
        *,
        backend: str | None = None,
        expert_parallel: int | None = None,
    ) -> ModelConfig:
        """Builds, validates and resolves 'auto' run-time choices for `backend` (default
        jax.default_backend()) and `expert_parallel` (default: the mesh set with jax.set_mesh;
        see backend.resolve_impls); raises ValueError naming the offending `model.<field>`."""
        values = known_fields(cls, cfg, "model")
        rope_scaling = values.get("rope_scaling")
        if isinstance(rope_scaling, dict):
            values["rope_scaling"] = _yarn_from_dict(rope_scaling)
        if "index_topk" in values and values["index_topk"] is None:
            values["index_topk"] = 0  # Hugging Face's "no indexer"
        _v4_fields_from_dict(values)
        if "mlp_layer_types" in values:  # hashable; None (HF's "absent") is ()
            values["mlp_layer_types"] = tuple(values["mlp_layer_types"] or ())
        if "swiglu_limit" in values:
            values["swiglu_limit"] = values["swiglu_limit"] or 0.0
        model = cls(**values)
        validate(model)
        return resolve_impls(model, backend, expert_parallel)


def known_fields(cls, cfg: ml_collections.ConfigDict | dict, section: str) -> dict:
    """A config block as a dict for dataclass `cls`; unknown keys are an error naming them."""
    values = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Unknown {section} config field(s) {unknown}; known fields: {sorted(known)}"
        )
    return values


def _yarn_from_dict(d: dict) -> YarnConfig | None:
    d = dict(d)
    kind = d.pop("type", d.pop("rope_type", "none")) or "none"
    if kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"model.rope_scaling.type={kind!r}; allowed: {ROPE_SCALING_TYPES}")
    if kind == "none":
        return None
    fields = {f.name for f in dataclasses.fields(YarnConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"Unknown model.rope_scaling field(s) {unknown}; known: {sorted(fields)}")
    return YarnConfig(**d)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"Invalid model config: {message}")


# DeepSeek-V4 attention: config conversion and checks.
def _v4_fields_from_dict(values: dict) -> None:
    """In place: `layer_types` as a tuple, `compress_rates` (HF's dict) as CompressRates."""
    if "layer_types" in values:  # hashable; None (HF's "absent") is ()
        values["layer_types"] = tuple(values["layer_types"] or ())
    rates = values.get("compress_rates")
    if isinstance(rates, dict):
        known = {f.name for f in dataclasses.fields(CompressRates)}
        unknown = sorted(set(rates) - known)
        if unknown:
            raise ValueError(
                f"Unknown model.compress_rates key(s) {unknown}; allowed: {sorted(known)}"
            )
        values["compress_rates"] = CompressRates(**rates)


def _validate_v4_attention(m: ModelConfig) -> None:
    """DeepSeek-V4 attention's fields (attention='v4'); layer_types are V4's alone."""
    if m.attention != "v4":
        _require(
            not m.layer_types,
            f"model.layer_types={list(m.layer_types)} is DeepSeek-V4's per-layer attention "
            f"schedule: it needs model.attention='v4', not {m.attention!r}",
        )
        return
    n = m.num_hidden_layers
    _require(
        len(m.layer_types) == n,
        f"model.layer_types has {len(m.layer_types)} entries; it needs one per layer "
        f"(model.num_hidden_layers={n}), each one of {V4_LAYER_TYPES}",
    )
    bad = sorted({t for t in m.layer_types if t not in V4_LAYER_TYPES})
    _require(not bad, f"model.layer_types has {bad}; allowed: {V4_LAYER_TYPES}")
    _require(
        not m.scan_layers,
        "model.scan_layers=True: DeepSeek-V4's layers differ by model.layer_types (their "
        "params and caches), so they cannot be one lax.scan; allowed: False",
    )
    _require(
        m.num_key_value_heads == 1,
        f"model.num_key_value_heads={m.num_key_value_heads}: DeepSeek-V4 attention has one "
        "shared key=value head; allowed: 1",
    )
    _require(
        m.head_dim > 0 and m.head_dim % 2 == 0, f"model.head_dim={m.head_dim} must be even > 0"
    )
    rd = m.v4_rope_dim
    _require(
        0 < m.partial_rotary_factor <= 1 and rd > 0 and rd % 2 == 0,
        f"model.partial_rotary_factor={m.partial_rotary_factor} must be in (0, 1] and make "
        f"model.head_dim * it = {rd} rotated features an even number > 0",
    )
    _require(
        m.q_lora_rank is not None and m.q_lora_rank > 0,
        f"model.q_lora_rank={m.q_lora_rank}: DeepSeek-V4 queries come from a latent, > 0",
    )
    _require(m.sliding_window > 0, f"model.sliding_window={m.sliding_window} must be > 0")
    _require(m.compress_rope_theta > 0, "model.compress_rope_theta must be > 0")
    _require(
        m.o_groups > 0 and m.num_attention_heads % m.o_groups == 0,
        f"model.o_groups={m.o_groups} must be > 0 and divide model.num_attention_heads="
        f"{m.num_attention_heads}",
    )
    _require(m.o_lora_rank > 0, f"model.o_lora_rank={m.o_lora_rank} must be > 0")
    for kind in ("compressed_sparse_attention", "heavily_compressed_attention"):
        rate = getattr(m.compress_rates, kind)
        _require(
            rate > 0 or kind not in m.layer_types,
            f"model.compress_rates.{kind}={rate} must be > 0 (model.layer_types has {kind})",
        )
    if "compressed_sparse_attention" in m.layer_types:
        for name in ("index_topk", "index_n_heads"):
            _require(
                getattr(m, name) > 0,
                f"model.{name}={getattr(m, name)} must be > 0: model.layer_types has "
                "compressed_sparse_attention (its lightning indexer)",
            )
        _require(
            m.index_head_dim >= rd,
            f"model.index_head_dim={m.index_head_dim} must be >= model.head_dim * "
            f"model.partial_rotary_factor={rd} (its last {rd} features are rotated)",
        )


def validate(m: ModelConfig) -> None:
    """Checks ranges and cross-field consistency; every message names the fields involved."""
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        _require(getattr(m, name) > 0, f"model.{name}={getattr(m, name)} must be > 0")
    _require(
        m.attention in ATTENTION_KINDS,
        f"model.attention={m.attention!r}; allowed: {ATTENTION_KINDS}",
    )
    _require(m.dtype in (AUTO, *DTYPES), f"model.dtype={m.dtype!r}; allowed: {(AUTO, *DTYPES)}")
    _require(
        m.attention_impl in ATTENTION_IMPLS,
        f"model.attention_impl={m.attention_impl!r}; allowed: {ATTENTION_IMPLS}",
    )
    _require(m.param_dtype in DTYPES, f"model.param_dtype={m.param_dtype!r}; allowed: {DTYPES}")
    _require(m.rms_norm_eps > 0, f"model.rms_norm_eps={m.rms_norm_eps} must be > 0")
    _require(m.num_nextn_predict_layers >= 0, "model.num_nextn_predict_layers must be >= 0")
    if m.attention == "mla":
        _require(
            m.q_lora_rank is None or m.q_lora_rank > 0,
            f"model.q_lora_rank={m.q_lora_rank} must be None (no query compression) or > 0",
        )
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _require(getattr(m, name) > 0, f"model.{name}={getattr(m, name)} must be > 0 for MLA")
        _require(m.qk_rope_head_dim % 2 == 0, "model.qk_rope_head_dim must be even (rotary pairs)")
    elif m.attention == "gqa":
        _require(
            m.head_dim > 0 and m.head_dim % 2 == 0, f"model.head_dim={m.head_dim} must be even > 0"
        )
        kv = m.num_key_value_heads
        _require(
            kv > 0 and m.num_attention_heads % kv == 0,
            f"model.num_attention_heads={m.num_attention_heads} must be a multiple of "
            f"model.num_key_value_heads={kv} (> 0) for GQA",
        )
    _require(m.index_topk >= 0, f"model.index_topk={m.index_topk} must be >= 0 (0: dense MLA)")
    _validate_v4_attention(m)
    if m.index_topk and m.attention != "v4":  # DeepSeek-V3.2's indexer (V4's: above)
        _require(
            m.attention == "mla",
            f"model.index_topk={m.index_topk} (sparse attention) needs model.attention='mla', "
            f"not {m.attention!r}",
        )
        _require(
            m.q_lora_rank is not None,
            f"model.index_topk={m.index_topk}: the indexer reads the query latent, so "
            "model.q_lora_rank must be set (> 0)",
        )
        _require(
            m.index_n_heads > 0,
            f"model.index_n_heads={m.index_n_heads} must be > 0 with model.index_topk > 0",
        )
        _require(
            m.index_head_dim >= m.qk_rope_head_dim > 0,
            f"model.index_head_dim={m.index_head_dim} must be >= model.qk_rope_head_dim="
            f"{m.qk_rope_head_dim} (its first qk_rope_head_dim features are rotated)",
        )
    if m.rope_scaling is not None:
        y = m.rope_scaling
        _require(y.factor >= 1.0, f"model.rope_scaling.factor={y.factor} must be >= 1")
        _require(y.original_max_position_embeddings > 0, "model.rope_scaling.original_max_... > 0")
    _require(
        0 <= m.first_k_dense_replace <= m.num_hidden_layers,
        f"model.first_k_dense_replace={m.first_k_dense_replace} must be in "
        f"[0, model.num_hidden_layers={m.num_hidden_layers}]",
    )
    _require(m.n_routed_experts >= 0, f"model.n_routed_experts={m.n_routed_experts} must be >= 0")
    _validate_v4_block(m)
    dense_ffn = m.num_dense_layers > 0 or (m.num_nextn_predict_layers > 0 and not m.is_moe)
    if dense_ffn:
        _require(m.intermediate_size > 0, "model.intermediate_size must be > 0 (dense FFN layers)")
    if not m.is_moe:
        return
    E, K = m.n_routed_experts, m.num_experts_per_tok
    _require(m.moe_intermediate_size > 0, "model.moe_intermediate_size must be > 0 with experts")
    _require(m.n_shared_experts >= 0, "model.n_shared_experts must be >= 0")
    _require(
        m.scoring_func in SCORING_FUNCS,
        f"model.scoring_func={m.scoring_func!r}; allowed: {SCORING_FUNCS}",
    )
    _require(m.moe_impl in MOE_IMPLS, f"model.moe_impl={m.moe_impl!r}; allowed: {MOE_IMPLS}")
    _require(m.n_group >= 1, f"model.n_group={m.n_group} must be >= 1")
    _require(
        E % m.n_group == 0,
        f"model.n_routed_experts={E} is not divisible by model.n_group={m.n_group}",
    )
    _require(
        1 <= m.topk_group <= m.n_group,
        f"model.topk_group={m.topk_group} must be in [1, model.n_group={m.n_group}]",
    )
    per_group = E // m.n_group
    if m.n_group > 1 and m.scoring_func != "softmax":
        _require(
            per_group >= 2,
            f"model.n_routed_experts={E} / model.n_group={m.n_group} leaves {per_group} expert per "
            f"group; {m.scoring_func} routing scores a group by its top-2 experts, so needs >= 2",
        )
    reachable = m.topk_group * per_group
    _require(
        1 <= K <= reachable,
        f"model.num_experts_per_tok={K} must be in [1, {reachable}]: model.topk_group="
        f"{m.topk_group} groups of model.n_routed_experts/model.n_group={per_group} experts",
    )
    _require(m.routed_scaling_factor > 0, "model.routed_scaling_factor must be > 0")


def _validate_v4_block(m: ModelConfig) -> None:
    """The DeepSeek-V4 block's fields: mHC, hash-routed MoE layers, swiglu_limit."""
    _require(m.hc_mult >= 0, f"model.hc_mult={m.hc_mult} must be >= 0 (0: no mHC)")
    _require(
        not (m.num_nextn_predict_layers and (m.hc_mult or m.attention == "v4")),
        f"model.num_nextn_predict_layers={m.num_nextn_predict_layers}: DeepSeek-V4's "
        "multi-token prediction block (its own mHC streams and head) is not built; with "
        "model.hc_mult > 0 or model.attention='v4' allowed: 0",
    )
    if m.hc_mult:
        _require(
            m.hc_sinkhorn_iters >= 1,
            f"model.hc_sinkhorn_iters={m.hc_sinkhorn_iters} must be >= 1 with model.hc_mult > 0",
        )
        _require(m.hc_eps >= 0, f"model.hc_eps={m.hc_eps} must be >= 0")
    _require(
        m.swiglu_limit >= 0, f"model.swiglu_limit={m.swiglu_limit} must be >= 0 (0: no clipping)"
    )
    kinds = m.mlp_layer_types
    if kinds:
        _require(
            len(kinds) == m.num_hidden_layers,
            f"model.mlp_layer_types has {len(kinds)} entries; model.num_hidden_layers="
            f"{m.num_hidden_layers} needs one per layer",
        )
        bad = sorted({k for k in kinds if k not in MLP_LAYER_TYPES})
        _require(not bad, f"model.mlp_layer_types has {bad}; allowed: {MLP_LAYER_TYPES}")
        dense = [i for i, k in enumerate(kinds[: m.num_dense_layers]) if k == "hash_moe"]
        _require(
            not dense,
            f"model.mlp_layer_types[{dense[0] if dense else 0}]='hash_moe' but the layer is dense "
            f"(model.first_k_dense_replace={m.first_k_dense_replace}, model.n_routed_experts="
            f"{m.n_routed_experts})",
        )


def model_config_dict(**fields) -> ml_collections.ConfigDict:
    """A ConfigDict with every ModelConfig field (defaults overridden by `fields`).

    `q_lora_rank` is a typed placeholder so `--config.model.q_lora_rank=64` works from None, and
    `rope_scaling` is a nested dict with `type` in ('none', 'yarn').
    """
    values = {
        f.name: f.default
        for f in dataclasses.fields(ModelConfig)
        if f.default is not dataclasses.MISSING
    }
    values["compress_rates"] = dataclasses.asdict(CompressRates())
    values["rope_scaling"] = dict(
        type="none",
        factor=1.0,
        original_max_position_embeddings=4096,
        beta_fast=32.0,
        beta_slow=1.0,
        mscale=1.0,
        mscale_all_dim=0.0,
    )
    values.update(fields)
    q_lora = values.pop("q_lora_rank")
    cfg = ml_collections.ConfigDict(values)
    cfg.q_lora_rank = config_dict.placeholder(int)
    if q_lora is not None:
        cfg.q_lora_rank = q_lora
    return cfg


# Presets. `tiny` is shared by the tests; `small` is still fast on a 2-core CPU.
PRESETS = {
    "tiny": dict(
        vocab_size=264,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        attention="mla",
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        max_position_embeddings=1024,
    ),
    "small": dict(
        vocab_size=264,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=8,
        attention="mla",
        q_lora_rank=128,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        moe_intermediate_size=128,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        max_position_embeddings=1024,
    ),
    # Dense GQA students/baselines (Qwen2/Llama-like).
    "tiny_dense": dict(
        vocab_size=264,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        attention="gqa",
        num_key_value_heads=2,
        head_dim=16,
        rope_interleave=False,
        rope_theta=1e6,
        max_position_embeddings=1024,
    ),
    "small_dense": dict(
        vocab_size=264,
        hidden_size=256,
        intermediate_size=640,
        num_hidden_layers=6,
        num_attention_heads=8,
        attention="gqa",
        num_key_value_heads=2,
        head_dim=32,
        rope_interleave=False,
        rope_theta=1e6,
        max_position_embeddings=1024,
    ),
}

# `tiny` with DeepSeek-V3.2's sparse attention (DSA, arXiv 2512.02556 sec. 2.1): each query
# attends to its 8 best keys by a 4-head lightning indexer.
PRESETS["tiny_v32"] = dict(PRESETS["tiny"], index_topk=8, index_n_heads=4, index_head_dim=16)

# DeepSeek-V4 at `tiny`'s width (V4 report sec. 2; HF DeepseekV4Config's fields): every layer
# MoE (the first hash-routed), mHC with 4 streams, sqrtsoftplus routing, one key=value head of
# 32 (8 rotated), a 32-token sliding window in every layer, and one layer of each kind plus a
# second CSA: compressed sparse (an entry per 4 tokens, the indexer's 8 best) and heavily
# compressed (per 16, V4's 128 scaled to R1-Zero's ~250-token rows). No MTP (not built for V4).
PRESETS["tiny_v4"] = dict(
    vocab_size=264,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    attention="v4",
    num_key_value_heads=1,
    head_dim=32,
    q_lora_rank=32,
    partial_rotary_factor=0.25,
    sliding_window=32,
    layer_types=(
        "sliding_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
        "compressed_sparse_attention",
    ),
    compress_rates=dict(compressed_sparse_attention=4, heavily_compressed_attention=16),
    compress_rope_theta=160000.0,
    index_topk=8,
    index_n_heads=4,
    index_head_dim=16,
    o_groups=2,
    o_lora_rank=32,
    moe_intermediate_size=32,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    scoring_func="sqrtsoftplus",
    routed_scaling_factor=1.5,
    first_k_dense_replace=0,
    mlp_layer_types=("hash_moe", "moe", "moe", "moe"),
    hc_mult=4,
    hc_sinkhorn_iters=20,
    swiglu_limit=10.0,
    num_nextn_predict_layers=0,
    max_position_embeddings=1024,
)

# The same generations at `small`'s width: V3.2 with 16 selected keys of 8 indexer heads, and
# V4 with six layers (sliding, then CSA / HCA alternating; HCA an entry per 32 tokens), two
# hash-routed layers first and 16 experts (top-4) as `small`.
PRESETS["small_v32"] = dict(PRESETS["small"], index_topk=16, index_n_heads=8, index_head_dim=32)
PRESETS["small_v4"] = dict(
    PRESETS["tiny_v4"],
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=8,
    head_dim=64,
    q_lora_rank=128,
    sliding_window=64,
    layer_types=("sliding_attention",)
    + ("compressed_sparse_attention", "heavily_compressed_attention") * 2
    + ("compressed_sparse_attention",),
    compress_rates=dict(compressed_sparse_attention=4, heavily_compressed_attention=32),
    index_topk=16,
    index_n_heads=8,
    index_head_dim=32,
    o_groups=4,
    o_lora_rank=64,
    moe_intermediate_size=128,
    n_routed_experts=16,
    num_experts_per_tok=4,
    mlp_layer_types=("hash_moe",) * 2 + ("moe",) * 4,
)


def preset(name: str, **overrides) -> ml_collections.ConfigDict:
    """The named model preset as an overridable ConfigDict."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; allowed: {sorted(PRESETS)}")
    return model_config_dict(**{**PRESETS[name], **overrides})
