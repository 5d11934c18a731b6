"""Closed-form parameter and FLOP counts (what the tests check against the real param tree)."""

from __future__ import annotations

from moe_rl.models.config import ModelConfig


def _v4_attention_params(m: ModelConfig, layer_type: str) -> int:
    """compressed_attention.V4Attention of one layer: queries from the latent, the key=value
    projection, sinks, the grouped low-rank output, and the compressor (and CSA's indexer)."""
    D, H, d, r = m.hidden_size, m.num_attention_heads, m.head_dim, m.q_lora_rank
    base = (
        D * r
        + r
        + r * H * d
        + D * d
        + d
        + H
        + H * d * m.o_lora_rank
        + m.o_groups * (m.o_lora_rank * D)
    )
    if layer_type == "sliding_attention":
        return base
    rate = getattr(m.compress_rates, layer_type)
    csa = layer_type == "compressed_sparse_attention"

    def compressor(dim: int) -> int:  # kv_proj, gate_proj, position_bias, kv_norm
        width = dim * (2 if csa else 1)
        return 2 * D * width + rate * width + dim

    indexer = 0
    if csa:  # its own compressor of index_head_dim, q_b_proj, weights_proj
        J, di = m.index_n_heads, m.index_head_dim
        indexer = compressor(di) + r * J * di + D * J
    return base + compressor(d) + indexer


def _attention_params(m: ModelConfig, layer: int = 0) -> int:
    D, H = m.hidden_size, m.num_attention_heads
    if m.attention == "v4":
        return _v4_attention_params(m, m.layer_types[layer])
    if m.attention == "gqa":
        qkv = D * H * m.head_dim + 2 * D * m.num_key_value_heads * m.head_dim
        bias = (H + 2 * m.num_key_value_heads) * m.head_dim if m.attention_bias else 0
        return qkv + bias + H * m.head_dim * D
    q_out = H * m.qk_head_dim
    q = (
        D * q_out
        if m.q_lora_rank is None
        else D * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * q_out
    )
    kv_a = D * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
    kv_b = m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim)
    indexer = 0
    if m.index_topk:  # DSA lightning indexer: wq_b, wk, k_norm (scale, bias), weights_proj
        Hi, di = m.index_n_heads, m.index_head_dim
        indexer = m.q_lora_rank * Hi * di + D * di + 2 * di + D * Hi
    return q + kv_a + kv_b + H * m.v_head_dim * D + indexer


def _moe_params(m: ModelConfig, experts: int) -> int:
    """Router + `experts` routed experts + shared experts."""
    D, F = m.hidden_size, m.moe_intermediate_size
    return D * m.n_routed_experts + 3 * experts * D * F + 3 * D * F * m.n_shared_experts


def _hc_params(m: ModelConfig, n_out: int, n_scales: int) -> int:
    """One mHC map (hyper_connections._mixes): fn [N*D, n_out], base [n_out], scale."""
    return m.hc_mult * m.hidden_size * n_out + n_out + n_scales


def _layer_params(m: ModelConfig, moe: bool, experts: int, layer: int = 0) -> int:
    ffn = _moe_params(m, experts) if moe else 3 * m.hidden_size * m.intermediate_size
    N = m.hc_mult  # mHC: one HyperConnection around attention, one around the FFN
    hc = 2 * _hc_params(m, (2 + N) * N, 3) if N else 0
    return 2 * m.hidden_size + _attention_params(m, layer) + ffn + hc


def param_counts(m: ModelConfig) -> dict[str, int]:
    """total: every parameter (incl. MTP); activated: used by one token of the main model.

    `activated` counts only the K chosen routed experts of each MoE layer, the input embedding
    and the output head, and excludes the MTP modules (training-only).
    """
    D, V = m.hidden_size, m.vocab_size
    E, K = m.n_routed_experts, m.num_experts_per_tok
    embed = V * D
    head = 0 if m.tie_word_embeddings else D * V

    def body(experts):
        layers = sum(
            _layer_params(m, kind != "dense", experts, i) for i, kind in enumerate(m.mlp_kinds)
        )
        head = _hc_params(m, m.hc_mult, 1) if m.hc_mult else 0  # mHC's HyperHead
        return layers + D + head  # + the final norm

    mtp_layer = _layer_params(m, m.is_moe, E)
    mtp = m.num_nextn_predict_layers * (3 * D + 2 * D * D + mtp_layer)
    total = embed + head + body(E) + mtp
    return {
        "total": total,
        "activated": embed + head + body(K),
        "embedding": embed,
        "mtp": mtp,
    }


def flops_per_token(m: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x activated matmul params + attention (Kaplan et al. 2020).

    The input embedding is a lookup, not a matmul, so it is excluded; the tied/untied output
    head is included. Attention adds 6 * L * S_avg * (qk + v dims) * heads for causal S_avg=S/2;
    with sparse attention the keys a query reads: DeepSeek-V3.2's index_topk (plus its
    indexer's scores of all S_avg keys), DeepSeek-V4's window and compressed entries
    (`_v4_attention_keys`). These are the algorithm's FLOPs: the full forward computes V3.2's
    scores densely and masks them (attention.MLA), so at training lengths it does more work.
    """
    counts = param_counts(m)
    matmul = counts["activated"] - counts["embedding"]
    if m.tie_word_embeddings:
        matmul += m.vocab_size * m.hidden_size
    if m.attention == "v4":
        attn = sum(_v4_attention_keys(m, t, seq_len) for t in m.layer_types)
        return 6.0 * matmul + 6.0 * attn
    if m.attention == "mla":
        per_head = m.qk_head_dim + m.v_head_dim
    else:
        per_head = 2 * m.head_dim
    keys = seq_len / 2
    index = 0.0
    if m.index_topk:  # DSA (V3.2): index_topk keys per query, the indexer scores all of them
        keys = min(m.index_topk, keys)
        index = m.num_hidden_layers * m.index_n_heads * m.index_head_dim * seq_len / 2
    attn = m.num_hidden_layers * m.num_attention_heads * per_head * keys + index
    return 6.0 * matmul + 6.0 * attn


def _v4_attention_keys(m: ModelConfig, layer_type: str, seq_len: int) -> float:
    """Multiply-adds per token of one V4 layer's scores and weighted sum (key = value, head_dim
    each), over the keys a query reads on average: the window (min(W, S/2)), plus the visible
    compressed entries (HCA: S/(2m) of them; CSA: at most index_topk, and the indexer's
    J x index_head_dim score of every visible entry)."""
    per_key = 2 * m.num_attention_heads * m.head_dim
    keys = min(m.sliding_window, seq_len / 2)
    if layer_type == "sliding_attention":
        return per_key * keys
    entries = seq_len / (2 * getattr(m.compress_rates, layer_type))
    if layer_type == "heavily_compressed_attention":
        return per_key * (keys + entries)
    index = m.index_n_heads * m.index_head_dim * entries
    return per_key * (keys + min(m.index_topk, entries)) + index
