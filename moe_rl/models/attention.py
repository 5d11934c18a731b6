"""Multi-head Latent Attention (DeepSeek-V2/V3) and grouped-query attention.

Both take an explicit per-layer KV cache (or None) and return the updated cache: the cache is
data, not module state. The mask [B, L, S] (causal by cache slot, same segment) is built once by
the decoder and shared by every layer.

Score and value contractions run head-major ([B, H, L, d]): XLA:CPU multiplies batched
matrices ~5x faster when the batch dims lead than with heads between length and features.
Without a cache (training, scoring) queries go in causal blocks (`causal_attention`): keys past
a block's last query are masked anyway, so they are neither multiplied nor stored. With
`model.attention_impl` 'dot_product_attention' or 'cudnn' the full forward goes through
`jax.nn.dot_product_attention` instead (`fused_attention`; cuDNN's flash attention on GPUs);
shared-prefix rows, DSA's indexer training and cached decoding keep the einsums.

DeepSeek Sparse Attention (DeepSeek-V3.2, arXiv 2512.02556 sec. 2.1), on when
`model.index_topk` > 0: a lightning indexer (`Indexer`) scores every visible key of each query
and MLA attends to the query's `index_topk` best keys only (`sparse_mask`); the indexer's keys
are cached beside the latent.

Training the indexer (sec. 2.1.1): MLA built with `dsa='warmup'` attends densely and
`dsa='sparse'` through the top-k; both return, besides the output, each query's KL divergence
between the main attention (summed over heads, L1-normalised) and the indexer's softmax
(`indexer_kl`), over the visible keys (warm-up) or the selected ones (sparse training).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_rl.models.config import ModelConfig
from moe_rl.models.layers import (
    RMSNorm,
    Rotary,
    apply_rope,
    logical_param,
    normal_init,
    rope_frequencies,
    yarn_mscale,
)

NEG_INF = float(jnp.finfo(jnp.float32).min)


def masked_softmax(scores_BHLS: jax.Array, mask_BLS: jax.Array) -> jax.Array:
    """Softmax over keys in float32; masked keys get zero weight (fully masked rows stay finite)."""
    scores = jnp.where(mask_BLS[:, None], scores_BHLS.astype(jnp.float32), NEG_INF)
    return jax.nn.softmax(scores, axis=-1)


def write_cache(
    buffer: jax.Array, new: jax.Array, index: jax.Array, slot_axis: int = 1
) -> jax.Array:
    """Writes `new` at slots [index, index + L) along `slot_axis` of every row."""
    start = [0] * buffer.ndim
    start[slot_axis] = index
    return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), tuple(start))


ATTENTION_BLOCK = 64  # query rows per causal block (at least; see causal_blocks)


def causal_blocks(L: int, block: int = ATTENTION_BLOCK) -> list[tuple[int, int]]:
    """Query blocks [lo, hi) covering L slots: at most 4, of at least `block` rows (one block
    if L < 2 * block). Query block [lo, hi) attends to key slots [0, hi) only."""
    size = max(block, -(-L // 4))
    return [(lo, min(lo + size, L)) for lo in range(0, L, size)]


def causal_attention(
    scores_fn, values_fn, mask_BLS: jax.Array, dt, probs_out: list | None = None
) -> jax.Array:
    """softmax(masked scores) @ values over causal query blocks, concatenated on the L axis (2).

    `scores_fn(lo, hi)` gives the scaled scores [B, H, hi - lo, hi] of queries lo..hi-1 against
    keys 0..hi-1, `values_fn(probs, hi)` the weighted sum [B, H, hi - lo, d]. The mask must be
    causal by slot (key slot <= query slot), as it is without a cache: keys after a block are
    masked for all its queries, so skipping them changes nothing but the cost (~5/8 of the full
    [L, L] scores with 4 blocks). `probs_out`, a list, receives (lo, hi, float32 probabilities
    [B, H, hi - lo, hi]) of each block (DSA's indexer loss reads them).
    """
    outs = []
    for lo, hi in causal_blocks(mask_BLS.shape[1]):
        probs = masked_softmax(scores_fn(lo, hi), mask_BLS[:, lo:hi, :hi])
        if probs_out is not None:
            probs_out.append((lo, hi, probs))
        outs.append(values_fn(probs.astype(dt), hi))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)


def fused_attention(
    q_BHLk: jax.Array, k_BKSk: jax.Array, v_BKSv: jax.Array, mask_BLS: jax.Array, impl: str
) -> jax.Array:
    """softmax(masked q.k) @ v through `jax.nn.dot_product_attention`: [B, H, L, dv]; `impl`
    'dot_product_attention' (implementation=None) or 'cudnn' (model.attention_impl).

    Full forward only: the mask is causal by slot, so `is_causal` lets cuDNN skip the blocks
    above the diagonal; the mask (documents, DSA's top-k) enters as a bias. Queries scaled
    already; K key heads read by H // K query heads each (GQA; MLA: K = H). Keys and values
    must share one head width: the narrower (MLA's v_head_dim < qk_head_dim) is zero-padded
    and the padding sliced off the output. cuDNN trains with a bias only at even lengths: odd
    ones take XLA's implementation."""
    dk, dv, L = q_BHLk.shape[-1], v_BKSv.shape[-1], q_BHLk.shape[2]
    width = max(dk, dv)

    def to_BLHw(a):  # jax.nn.dot_product_attention is length-major
        a = jnp.pad(a, ((0, 0), (0, 0), (0, 0), (0, width - a.shape[-1])))
        return a.transpose(0, 2, 1, 3)

    implementation = "cudnn" if impl == "cudnn" and L % 2 == 0 else None
    o_BLHw = jax.nn.dot_product_attention(
        to_BLHw(q_BHLk),
        to_BLHw(k_BKSk),
        to_BLHw(v_BKSv),
        mask=mask_BLS[:, None],
        scale=1.0,
        is_causal=True,
        implementation=implementation,
    )
    return o_BLHw[..., :dv].transpose(0, 2, 1, 3)


def prefix_attention(
    q_BKRLd: jax.Array, k_BKSd: jax.Array, v_BKSv: jax.Array, mask_BLS: jax.Array, prefix, dt
) -> jax.Array:
    """softmax(masked q.k) @ v of a shared-prefix row, by blocks: [B, K, R, L, dv].

    The row is a prompt of P slots then G continuations of N slots each (`prefix` = (P, G);
    transformer.forward's `shared_prefix`): the prompt's queries see the prompt, continuation
    g's see the prompt and continuation g only. So each continuation's scores are computed
    against those P + N keys ([.., G, N, P + N], G N (P + N) products) and never against the
    other continuations ((P + G N)^2 / 2 with causal blocks; at GRPO's P = 128, G = 16, N = 320
    6x fewer, and as many fewer probabilities kept for the backward pass). Exact: the keys left
    out are the ones `mask_BLS` masks for those queries. Queries [B, K, R, L, d] with R query
    heads per key head K (GQA; MLA: K = H, R = 1), scaled already; keys [B, K, S = L, d]."""
    P, G = prefix
    B, K, R, L, d = q_BKRLd.shape
    N = (L - P) // G
    if P + G * N != L or k_BKSd.shape[2] != L:
        raise ValueError(f"prefix (P={P}, G={G}) does not lay out a row of {L} slots")

    def attend(scores, mask, values):
        probs = jax.nn.softmax(jnp.where(mask, scores.astype(jnp.float32), NEG_INF), axis=-1)
        return probs.astype(dt), values

    # The prompt's queries, causal over the prompt.
    s_p = jnp.einsum("bkrld,bksd->bkrls", q_BKRLd[:, :, :, :P], k_BKSd[:, :, :P])
    probs_p, _ = attend(s_p, mask_BLS[:, None, None, :P, :P], None)
    o_p = jnp.einsum("bkrls,bksv->bkrlv", probs_p, v_BKSv[:, :, :P])
    # Each continuation's queries against [the prompt, itself].
    q_c = q_BKRLd[:, :, :, P:].reshape(B, K, R, G, N, d)
    k_c = k_BKSd[:, :, P:].reshape(B, K, G, N, d)
    v_c = v_BKSv[:, :, P:].reshape(B, K, G, N, v_BKSv.shape[-1])
    s_cp = jnp.einsum("bkrgnd,bksd->bkrgns", q_c, k_BKSd[:, :, :P])
    s_cc = jnp.einsum("bkrgnd,bkgmd->bkrgnm", q_c, k_c)
    m_cp = mask_BLS[:, P:, :P].reshape(B, G, N, P)
    m_cc = jnp.moveaxis(
        jnp.diagonal(mask_BLS[:, P:, P:].reshape(B, G, N, G, N), axis1=1, axis2=3), -1, 1
    )  # [B, G, N, N]: continuation g's own block
    mask = jnp.concatenate([m_cp, m_cc], axis=-1)[:, None, None]
    probs, _ = attend(jnp.concatenate([s_cp, s_cc], axis=-1), mask, None)
    o_c = jnp.einsum("bkrgns,bksv->bkrgnv", probs[..., :P], v_BKSv[:, :, :P]) + jnp.einsum(
        "bkrgnm,bkgmv->bkrgnv", probs[..., P:], v_c
    )
    return jnp.concatenate([o_p, o_c.reshape(B, K, R, G * N, -1)], axis=3)


def softmax_scale(cfg: ModelConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN (DeepSeek-V2)."""
    scale = 1.0 / math.sqrt(cfg.qk_head_dim)
    yarn = cfg.rope_scaling
    if yarn is not None and yarn.mscale_all_dim:
        scale *= yarn_mscale(yarn.factor, yarn.mscale_all_dim) ** 2
    return scale


def init_layer_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    """Zeroed per-layer cache. MLA keeps only the normalised latent and the shared roped key
    (and, with sparse attention, the indexer's key)."""
    dt = cfg.compute_dtype
    if cfg.attention == "v4":  # differs by layer type: transformer.init_cache
        raise ValueError("model.attention='v4': compressed_attention.init_v4_layer_cache")
    if cfg.attention == "mla":
        cache = {
            "latent": jnp.zeros((batch, max_len, cfg.kv_lora_rank), dt),
            "k_rope": jnp.zeros((batch, max_len, cfg.qk_rope_head_dim), dt),
        }
        if cfg.index_topk:
            cache["index_k"] = jnp.zeros((batch, max_len, cfg.index_head_dim), dt)
        return cache
    shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)  # head-major: fast dots
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


INDEXER_NORM_EPS = 1e-6  # the indexer key's LayerNorm epsilon (fixed in DeepSeek-V3.2's code)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm (Ba et al. 2016) over the last axis in float32: (x - mean) / std * scale + bias."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class Indexer(nn.Module):
    """The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2, arXiv 2512.02556
    sec. 2.1, eq. 1): the index score of query token t for key token s is

        I[t, s] = sum_j w[t, j] * ReLU(q[t, j] . k[s])

    over `index_n_heads` light heads j. The queries q[t, j] come from MLA's query latent
    (`wq_b`), one key k[s] per token is shared by every head (`wk`, then a LayerNorm with bias)
    and the head weights w[t, j] from the token itself (`weights_proj`). The first
    qk_rope_head_dim features of queries and keys are rotated, by halves (not by pairs as in
    MLA). As in transformers' DeepseekV32Indexer, dot products are scaled by
    1/sqrt(index_head_dim) and weights by 1/sqrt(index_n_heads); the reference implementation's
    Hadamard rotation (which preserves dot products) and FP8 scoring are precision choices,
    left out.

    Returns the queries [B, L, J, i], keys [B, L, i] (compute dtype, what the cache holds) and
    weights [B, L, J] (float32, scales folded in); `sparse_mask` scores and selects.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLD, q_BLr, positions_BL):
        cfg = self.cfg
        dt, pdt, init = cfg.compute_dtype, cfg.weight_dtype, normal_init(cfg)
        D, r, dr = cfg.hidden_size, cfg.q_lora_rank, cfg.qk_rope_head_dim
        J, di = cfg.index_n_heads, cfg.index_head_dim
        w_q = logical_param(self, "wq_b", (r, J, di), ("q_lora", "heads", "kv"), init, pdt)
        w_k = logical_param(self, "wk", (D, di), ("embed", "kv"), init, pdt)
        k_scale = logical_param(self, "k_norm_scale", (di,), ("kv",), nn.initializers.ones, pdt)
        k_bias = logical_param(self, "k_norm_bias", (di,), ("kv",), nn.initializers.zeros, pdt)
        w_w = logical_param(self, "weights_proj", (D, J), ("embed", "heads"), init, pdt)
        inv_freq, scale = rope_frequencies(dr, cfg.rope_theta, cfg.rope_scaling)
        rope = lambda a: apply_rope(a, positions_BL, inv_freq, scale, interleaved=False)

        q_BLJi = jnp.einsum("blr,rji->blji", q_BLr, w_q.astype(dt))
        q_BLJi = jnp.concatenate([rope(q_BLJi[..., :dr]), q_BLJi[..., dr:]], axis=-1)
        k_BLi = layer_norm(x_BLD @ w_k.astype(dt), k_scale, k_bias, INDEXER_NORM_EPS).astype(dt)
        k_BLi = jnp.concatenate([rope(k_BLi[:, :, None, :dr])[:, :, 0], k_BLi[..., dr:]], axis=-1)
        w_BLJ = (x_BLD @ w_w.astype(dt)).astype(jnp.float32) * J**-0.5
        return q_BLJi, k_BLi, w_BLJ


def index_scores(cfg: ModelConfig, q_BLJi, w_BLJ, k_BSi) -> jax.Array:
    """I[b, t, s] = sum_j w[b, t, j] ReLU(q[b, t, j] . k[b, s] / sqrt(index_head_dim)), float32."""
    dots = jnp.einsum("blji,bsi->bljs", q_BLJi.astype(jnp.float32), k_BSi.astype(jnp.float32))
    relu = jax.nn.relu(dots * cfg.index_head_dim**-0.5)
    return jnp.einsum("bljs,blj->bls", relu, w_BLJ)


def top_k_keys(index_BLS: jax.Array, mask_BLS: jax.Array, k: int):
    """(mask_BLS restricted to each query's k visible keys of highest index score, their slots
    [B, L, k]) (DeepSeek-V3.2 sec. 2.1, eq. 2). Masked keys (the future, other documents,
    padding) are never chosen; a query that sees k keys or fewer keeps all of them (its slots
    then include masked ones, which the mask excludes). (mask_BLS, None) when k >= S."""
    S = index_BLS.shape[-1]
    if k >= S:
        return mask_BLS, None
    scores = jnp.where(mask_BLS, index_BLS, -jnp.inf)
    _, top_BLK = jax.lax.top_k(scores, k)
    chosen = jnp.put_along_axis(
        jnp.zeros(scores.shape, bool), top_BLK, True, axis=-1, inplace=False
    )
    return chosen & mask_BLS, top_BLK


def sparse_mask(cfg: ModelConfig, q_BLJi, w_BLJ, k_BSi, mask_BLS, causal: bool):
    """The attention mask of DeepSeek Sparse Attention: each query's top-`index_topk` keys by
    the indexer's scores, among those `mask_BLS` lets it see; with the chosen slots [B, L, k]
    when not `causal` (None when every slot is kept), for decoding from those alone. Selection
    is not differentiable (the paper trains the indexer by its own KL loss, on detached
    inputs), so no gradient flows into the scores.

    `causal` (no cache: `mask_BLS` is causal by slot) scores in `causal_blocks`, each query
    block against the keys up to its last query only, as `causal_attention` does."""
    q_BLJi, w_BLJ, k_BSi = jax.lax.stop_gradient((q_BLJi, w_BLJ, k_BSi))
    k = cfg.index_topk
    if not causal:
        return top_k_keys(index_scores(cfg, q_BLJi, w_BLJ, k_BSi), mask_BLS, k)
    S = mask_BLS.shape[2]
    blocks = []
    for lo, hi in causal_blocks(mask_BLS.shape[1]):
        index = index_scores(cfg, q_BLJi[:, lo:hi], w_BLJ[:, lo:hi], k_BSi[:, :hi])
        keep = top_k_keys(index, mask_BLS[:, lo:hi, :hi], k)[0]
        blocks.append(jnp.pad(keep, ((0, 0), (0, 0), (0, S - hi))))
    return (blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=1)), None


DSA_STAGES = ("warmup", "sparse")  # MLA's `dsa` (and train.dsa_stage) values, '' = inference


def indexer_kl(probs_BHLS: jax.Array, index_BLS: jax.Array, keep_BLS: jax.Array):
    """The lightning indexer's training loss per query (DeepSeek-V3.2, arXiv 2512.02556
    sec. 2.1.1, eqs. 3-4): KL(p[t, :] || softmax(I[t, :])), where the target p[t, :] is the main
    attention `probs_BHLS` summed over heads and L1-normalised over keys (no gradient), and the
    indexer's distribution is the softmax of its scores `index_BLS` over the keys `keep_BLS`
    lets through: every visible key in the dense warm-up, the selected top-k in sparse
    training. Returns (KL [B, L], target p [B, L, S], indexer log-probs [B, L, S], 0 where not
    kept), in float32."""
    keep = keep_BLS
    p = jnp.where(keep, jnp.sum(jax.lax.stop_gradient(probs_BHLS).astype(jnp.float32), 1), 0.0)
    p = p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    logq = jax.nn.log_softmax(jnp.where(keep, index_BLS.astype(jnp.float32), NEG_INF), axis=-1)
    logq = jnp.where(keep, logq, 0.0)
    positive = p > 0
    logp = jnp.log(jnp.where(positive, p, 1.0))
    kl = jnp.sum(jnp.where(positive, p * (logp - logq), 0.0), axis=-1)
    return kl, p, logq


class MLA(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V3 sec. 2.1.1, eqs. 1-11).

    Queries: optional low-rank compression with RMSNorm on the latent. Keys/values: one
    compressed latent c_KV per token (RMSNorm'd) plus a decoupled RoPE key shared by all heads;
    only these two are cached. `mla_absorb` decodes in the latent space: W_UK is folded into
    the query and W_UV applied after the attention-weighted sum, so the cache is never
    decompressed.

    With `index_topk` > 0 this is DeepSeek-V3.2's DSA (arXiv 2512.02556 sec. 2.1): the
    `Indexer` (fed the query latent) picks each query's top-k keys and every path below
    attends to those only: through the mask (`sparse_mask`), except the absorbed decode,
    which gathers the k chosen latents and reads no other (O(k), not O(S), per query). The
    indexer's inputs are detached from the model (stop_gradient, sec. 2.1.1): it learns from
    its own KL loss only, never from the language-model loss.

    `dsa` ('' by default) trains the indexer, without a cache: 'warmup' attends densely (the
    indexer is computed but selects nothing), 'sparse' through the top-k; either returns
    (output, None, {'dsa_kl': per-query `indexer_kl` [B, L]}) and, when the 'intermediates'
    collection is mutable, sows the target 'dsa_target' and 'dsa_index_logp' [B, L, S].
    """

    cfg: ModelConfig
    dsa: str = ""
    prefix: tuple[int, int] | None = None  # a shared-prefix row's (P, G): prefix_attention

    @nn.compact
    def __call__(self, x_BLD, positions_BL, mask_BLS, cache=None, cache_index=None):
        cfg = self.cfg
        dt, pdt, init = cfg.compute_dtype, cfg.weight_dtype, normal_init(cfg)
        D, H = cfg.hidden_size, cfg.num_attention_heads
        dn, dr, dv, c = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        norm = lambda name, axis: RMSNorm(cfg.rms_norm_eps, dt, pdt, axis, name=name)
        rope = Rotary(cfg, dr)
        x = x_BLD.astype(dt)
        if self.dsa and (self.dsa not in DSA_STAGES or not cfg.index_topk or cache is not None):
            raise ValueError(
                f"MLA(dsa={self.dsa!r}) trains DSA's indexer: one of {DSA_STAGES}, with "
                f"model.index_topk > 0 (it is {cfg.index_topk}) and no cache"
            )

        if cfg.q_lora_rank is None:
            w_q = logical_param(
                self, "q_proj", (D, H, dn + dr), ("embed", "heads", "kv"), init, pdt
            )
            q_BLHk = jnp.einsum("bld,dhk->blhk", x, w_q.astype(dt))
        else:
            r = cfg.q_lora_rank
            w_qa = logical_param(self, "q_a_proj", (D, r), ("embed", "q_lora"), init, pdt)
            w_qb = logical_param(
                self, "q_b_proj", (r, H, dn + dr), ("q_lora", "heads", "kv"), init, pdt
            )
            q_BLr = norm("q_a_norm", "q_lora")(x @ w_qa.astype(dt))
            q_BLHk = jnp.einsum("blr,rhk->blhk", q_BLr, w_qb.astype(dt))
            if cfg.index_topk:  # DSA's lightning indexer (validation ensures q_lora_rank)
                iq_BLJi, ik_BLi, iw_BLJ = Indexer(cfg, name="indexer")(
                    jax.lax.stop_gradient(x), jax.lax.stop_gradient(q_BLr), positions_BL
                )
        top_BLK = None  # DSA's chosen key slots when decoding from them alone
        q_nope_BHLn = q_BLHk[..., :dn].transpose(0, 2, 1, 3)
        q_rope_BHLr = rope(q_BLHk[..., dn:], positions_BL).transpose(0, 2, 1, 3)

        w_kva = logical_param(self, "kv_a_proj", (D, c + dr), ("embed", "kv_lora"), init, pdt)
        kv_BLk = x @ w_kva.astype(dt)
        latent_BLc = norm("kv_a_norm", "kv_lora")(kv_BLk[..., :c])
        k_rope_BLr = rope(kv_BLk[..., None, c:], positions_BL)[:, :, 0]

        if cache is None:
            latent_BSc, k_rope_BSr, new_cache = latent_BLc, k_rope_BLr, None
        else:
            latent_BSc = write_cache(cache["latent"], latent_BLc, cache_index)
            k_rope_BSr = write_cache(cache["k_rope"], k_rope_BLr, cache_index)
            new_cache = {"latent": latent_BSc, "k_rope": k_rope_BSr}
        if cfg.index_topk:
            ik_BSi = ik_BLi
            if cache is not None:
                ik_BSi = new_cache["index_k"] = write_cache(cache["index_k"], ik_BLi, cache_index)
            if self.dsa != "warmup":  # the warm-up attends densely
                mask_BLS, top_BLK = sparse_mask(
                    cfg, iq_BLJi, iw_BLJ, ik_BSi, mask_BLS, cache is None
                )

        w_kvb = logical_param(
            self, "kv_b_proj", (c, H, dn + dv), ("kv_lora", "heads", "kv"), init, pdt
        )
        w_uk_cHn, w_uv_cHv = w_kvb[..., :dn].astype(dt), w_kvb[..., dn:].astype(dt)
        if cache is None:  # one score contraction: [q_nope, q_rope] . [k_nope, shared k_rope]
            q_BHLk = jnp.concatenate([q_nope_BHLn, q_rope_BHLr], axis=-1) * softmax_scale(cfg)
            k_nope_BHSn = jnp.einsum("bsc,chn->bhsn", latent_BSc, w_uk_cHn)
            k_rope_BHSr = jnp.broadcast_to(k_rope_BSr[:, None], (*k_nope_BHSn.shape[:3], dr))
            k_BHSk = jnp.concatenate([k_nope_BHSn, k_rope_BHSr.astype(dt)], axis=-1)
            v_BHSv = jnp.einsum("bsc,chv->bhsv", latent_BSc, w_uv_cHv)
            probs_out = [] if self.dsa else None
        # jax.nn.dot_product_attention where it fits: the full forward, but for the prefix
        # blocks and DSA's training (which reads the probabilities); decoding stays einsum.
        fused = cfg.attention_impl != "xla" and not self.dsa
        if cache is None and self.prefix and not cfg.index_topk:
            o_BHLv = prefix_attention(
                q_BHLk[:, :, None], k_BHSk, v_BHSv, mask_BLS, self.prefix, dt
            )[:, :, 0]
        elif cache is None and fused:
            o_BHLv = fused_attention(q_BHLk, k_BHSk, v_BHSv, mask_BLS, cfg.attention_impl)
        elif cache is None:
            o_BHLv = causal_attention(
                lambda lo, hi: jnp.einsum(
                    "bhlk,bhsk->bhls", q_BHLk[:, :, lo:hi], k_BHSk[:, :, :hi]
                ),
                lambda probs, hi: jnp.einsum("bhls,bhsv->bhlv", probs, v_BHSv[:, :, :hi]),
                mask_BLS,
                dt,
                probs_out,
            )
        elif cfg.mla_absorb and top_BLK is not None:  # DSA decode: the top-k latents only
            gather = lambda a_BSx: jnp.take_along_axis(a_BSx[:, None], top_BLK[..., None], axis=2)
            latent_BLKc, k_rope_BLKr = gather(latent_BSc), gather(k_rope_BSr)
            keep_BLK = jnp.take_along_axis(mask_BLS, top_BLK, axis=2)
            rope_scores = jnp.einsum("bhlr,blkr->bhlk", q_rope_BHLr, k_rope_BLKr)
            q_lat_BHLc = jnp.einsum("bhln,chn->bhlc", q_nope_BHLn, w_uk_cHn)
            scores = jnp.einsum("bhlc,blkc->bhlk", q_lat_BHLc, latent_BLKc) + rope_scores
            probs = masked_softmax(scores * softmax_scale(cfg), keep_BLK).astype(dt)
            o_lat_BHLc = jnp.einsum("bhlk,blkc->bhlc", probs, latent_BLKc)
            o_BHLv = jnp.einsum("bhlc,chv->bhlv", o_lat_BHLc, w_uv_cHv)
        elif cfg.mla_absorb:
            rope_scores = jnp.einsum("bhlr,bsr->bhls", q_rope_BHLr, k_rope_BSr)
            q_lat_BHLc = jnp.einsum("bhln,chn->bhlc", q_nope_BHLn, w_uk_cHn)
            scores = jnp.einsum("bhlc,bsc->bhls", q_lat_BHLc, latent_BSc) + rope_scores
            probs = masked_softmax(scores * softmax_scale(cfg), mask_BLS).astype(dt)
            o_lat_BHLc = jnp.einsum("bhls,bsc->bhlc", probs, latent_BSc)
            o_BHLv = jnp.einsum("bhlc,chv->bhlv", o_lat_BHLc, w_uv_cHv)
        else:
            rope_scores = jnp.einsum("bhlr,bsr->bhls", q_rope_BHLr, k_rope_BSr)
            k_nope_BHSn = jnp.einsum("bsc,chn->bhsn", latent_BSc, w_uk_cHn)
            v_BHSv = jnp.einsum("bsc,chv->bhsv", latent_BSc, w_uv_cHv)
            scores = jnp.einsum("bhln,bhsn->bhls", q_nope_BHLn, k_nope_BHSn) + rope_scores
            probs = masked_softmax(scores * softmax_scale(cfg), mask_BLS).astype(dt)
            o_BHLv = jnp.einsum("bhls,bhsv->bhlv", probs, v_BHSv)

        w_o = logical_param(self, "o_proj", (H, dv, D), ("heads", "kv", "embed"), init, pdt)
        out_BLD = jnp.einsum("bhlv,hvd->bld", o_BHLv, w_o.astype(dt))
        if not self.dsa:
            return out_BLD, new_cache
        return out_BLD, None, self._indexer_loss(probs_out, iq_BLJi, iw_BLJ, ik_BLi, mask_BLS)

    def _indexer_loss(self, probs_out, iq_BLJi, iw_BLJ, ik_BLi, mask_BLS) -> dict:
        """{'dsa_kl': [B, L]}: `indexer_kl` of each causal block of queries against the
        attention it computed (the mask is the attention's: visible or selected keys); the
        index scores are recomputed with gradient (`sparse_mask` selects without one)."""
        S = mask_BLS.shape[2]
        kls, targets, logqs = [], [], []
        for lo, hi, probs in probs_out:
            index = index_scores(self.cfg, iq_BLJi[:, lo:hi], iw_BLJ[:, lo:hi], ik_BLi[:, :hi])
            kl, target, logq = indexer_kl(probs, index, mask_BLS[:, lo:hi, :hi])
            kls.append(kl)
            targets.append(jnp.pad(target, ((0, 0), (0, 0), (0, S - hi))))
            logqs.append(jnp.pad(logq, ((0, 0), (0, 0), (0, S - hi))))
        if self.is_mutable_collection("intermediates"):
            self.sow("intermediates", "dsa_target", jnp.concatenate(targets, axis=1))
            self.sow("intermediates", "dsa_index_logp", jnp.concatenate(logqs, axis=1))
        return {"dsa_kl": jnp.concatenate(kls, axis=1)}


class GQA(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023) with rotary embeddings, as in Qwen2/Llama."""

    cfg: ModelConfig
    prefix: tuple[int, int] | None = None  # a shared-prefix row's (P, G): prefix_attention

    @nn.compact
    def __call__(self, x_BLD, positions_BL, mask_BLS, cache=None, cache_index=None):
        cfg = self.cfg
        dt, pdt, init = cfg.compute_dtype, cfg.weight_dtype, normal_init(cfg)
        D, H, KV, hd = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        x = x_BLD.astype(dt)

        def project(name, heads):
            w = logical_param(self, name, (D, heads, hd), ("embed", "heads", "kv"), init, pdt)
            y = jnp.einsum("bld,dhk->blhk", x, w.astype(dt))
            if cfg.attention_bias:
                b = logical_param(
                    self, f"{name}_bias", (heads, hd), ("heads", "kv"), nn.initializers.zeros, pdt
                )
                y = y + b.astype(dt)
            return y

        rope = Rotary(cfg, hd)
        head_major = lambda a: a.transpose(0, 2, 1, 3)
        q_BHLd = head_major(rope(project("q_proj", H), positions_BL))
        k_BKLd = head_major(rope(project("k_proj", KV), positions_BL))
        v_BKLd = head_major(project("v_proj", KV))
        if cache is None:
            k_BKSd, v_BKSd, new_cache = k_BKLd, v_BKLd, None
        else:
            k_BKSd = write_cache(cache["k"], k_BKLd, cache_index, slot_axis=2)
            v_BKSd = write_cache(cache["v"], v_BKLd, cache_index, slot_axis=2)
            new_cache = {"k": k_BKSd, "v": v_BKSd}

        B, L = x.shape[:2]
        q_BKGLd = q_BHLd.reshape(B, KV, H // KV, L, hd)  # head h reads kv head h // (H/KV)

        def scores(q_BKGld, end):  # scaled, against keys 0..end-1: [B, H, l, end]
            s = jnp.einsum("bkgld,bksd->bkgls", q_BKGld / math.sqrt(hd), k_BKSd[:, :, :end])
            return s.reshape(B, H, q_BKGld.shape[3], end)

        def values(probs_BHlS, end):  # [B, H, l, hd]
            l = probs_BHlS.shape[2]
            probs_BKGlS = probs_BHlS.reshape(B, KV, H // KV, l, end)
            o = jnp.einsum("bkgls,bksd->bkgld", probs_BKGlS, v_BKSd[:, :, :end])
            return o.reshape(B, H, l, hd)

        if cache is None and self.prefix:
            o_BHLd = prefix_attention(
                q_BKGLd / math.sqrt(hd), k_BKSd, v_BKSd, mask_BLS, self.prefix, dt
            ).reshape(B, H, L, hd)
        elif cache is None and cfg.attention_impl != "xla":  # see MLA
            o_BHLd = fused_attention(
                q_BHLd / math.sqrt(hd), k_BKSd, v_BKSd, mask_BLS, cfg.attention_impl
            )
        elif cache is None:
            o_BHLd = causal_attention(
                lambda lo, hi: scores(q_BKGLd[:, :, :, lo:hi], hi), values, mask_BLS, dt
            )
        else:
            S = k_BKSd.shape[2]
            o_BHLd = values(masked_softmax(scores(q_BKGLd, S), mask_BLS).astype(dt), S)
        w_o = logical_param(self, "o_proj", (H, hd, D), ("heads", "kv", "embed"), init, pdt)
        return jnp.einsum("bhld,hde->ble", o_BHLd, w_o.astype(dt)), new_cache


def attention_module(
    cfg: ModelConfig, name: str = "attn", dsa: str = "", prefix: tuple[int, int] | None = None
) -> nn.Module:
    """MLA (with `dsa`, see MLA) or GQA, by `cfg.attention`; `prefix`: a shared-prefix row's
    (P, G), attended by blocks (`prefix_attention`)."""
    if cfg.attention == "v4":  # one module per layer type: transformer.layer_attention
        raise ValueError("model.attention='v4' is compressed_attention.V4Attention, per layer")
    if cfg.attention == "mla":
        return MLA(cfg, dsa, prefix, name=name)
    return GQA(cfg, prefix, name=name)
