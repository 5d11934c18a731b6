"""Multi-head Latent Attention (DeepSeek-V2/V3) and grouped-query attention.

Both take an explicit per-layer KV cache (or None) and return the updated cache: the cache is
data, not module state. The mask [B, L, S] (causal by cache slot, same segment) is built once by
the decoder and shared by every layer.

Score and value contractions run head-major ([B, H, L, d]): XLA:CPU multiplies batched
matrices ~5x faster when the batch dims lead than with heads between length and features.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_rl.models.config import ModelConfig
from moe_rl.models.layers import RMSNorm, Rotary, logical_param, normal_init, yarn_mscale

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


def softmax_scale(cfg: ModelConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN (DeepSeek-V2)."""
    scale = 1.0 / math.sqrt(cfg.qk_head_dim)
    yarn = cfg.rope_scaling
    if yarn is not None and yarn.mscale_all_dim:
        scale *= yarn_mscale(yarn.factor, yarn.mscale_all_dim) ** 2
    return scale


def init_layer_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    """Zeroed per-layer cache. MLA keeps only the normalised latent and the shared roped key."""
    dt = cfg.compute_dtype
    if cfg.attention == "mla":
        return {
            "latent": jnp.zeros((batch, max_len, cfg.kv_lora_rank), dt),
            "k_rope": jnp.zeros((batch, max_len, cfg.qk_rope_head_dim), dt),
        }
    shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)  # head-major: fast dots
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


class MLA(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V3 sec. 2.1.1, eqs. 1-11).

    Queries: optional low-rank compression with RMSNorm on the latent. Keys/values: one
    compressed latent c_KV per token (RMSNorm'd) plus a decoupled RoPE key shared by all heads;
    only these two are cached. `mla_absorb` decodes in the latent space: W_UK is folded into
    the query and W_UV applied after the attention-weighted sum, so the cache is never
    decompressed.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLD, positions_BL, mask_BLS, cache=None, cache_index=None):
        cfg = self.cfg
        dt, pdt, init = cfg.compute_dtype, cfg.weight_dtype, normal_init(cfg)
        D, H = cfg.hidden_size, cfg.num_attention_heads
        dn, dr, dv, c = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        norm = lambda name, axis: RMSNorm(cfg.rms_norm_eps, dt, pdt, axis, name=name)
        rope = Rotary(cfg, dr)
        x = x_BLD.astype(dt)

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

        w_kvb = logical_param(
            self, "kv_b_proj", (c, H, dn + dv), ("kv_lora", "heads", "kv"), init, pdt
        )
        w_uk_cHn, w_uv_cHv = w_kvb[..., :dn].astype(dt), w_kvb[..., dn:].astype(dt)
        rope_scores = jnp.einsum("bhlr,bsr->bhls", q_rope_BHLr, k_rope_BSr)
        if cache is not None and cfg.mla_absorb:
            q_lat_BHLc = jnp.einsum("bhln,chn->bhlc", q_nope_BHLn, w_uk_cHn)
            scores = jnp.einsum("bhlc,bsc->bhls", q_lat_BHLc, latent_BSc) + rope_scores
            probs = masked_softmax(scores * softmax_scale(cfg), mask_BLS).astype(dt)
            o_lat_BHLc = jnp.einsum("bhls,bsc->bhlc", probs, latent_BSc)
            o_BHLv = jnp.einsum("bhlc,chv->bhlv", o_lat_BHLc, w_uv_cHv)
        else:
            k_nope_BHSn = jnp.einsum("bsc,chn->bhsn", latent_BSc, w_uk_cHn)
            v_BHSv = jnp.einsum("bsc,chv->bhsv", latent_BSc, w_uv_cHv)
            scores = jnp.einsum("bhln,bhsn->bhls", q_nope_BHLn, k_nope_BHSn) + rope_scores
            probs = masked_softmax(scores * softmax_scale(cfg), mask_BLS).astype(dt)
            o_BHLv = jnp.einsum("bhls,bhsv->bhlv", probs, v_BHSv)

        w_o = logical_param(self, "o_proj", (H, dv, D), ("heads", "kv", "embed"), init, pdt)
        return jnp.einsum("bhlv,hvd->bld", o_BHLv, w_o.astype(dt)), new_cache


class GQA(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023) with rotary embeddings, as in Qwen2/Llama."""

    cfg: ModelConfig

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
        scores = jnp.einsum("bkgld,bksd->bkgls", q_BKGLd, k_BKSd).reshape(B, H, L, -1)
        probs = masked_softmax(scores / math.sqrt(hd), mask_BLS).astype(dt)
        probs_BKGLS = probs.reshape(B, KV, H // KV, L, -1)
        o_BHLd = jnp.einsum("bkgls,bksd->bkgld", probs_BKGLS, v_BKSd).reshape(B, H, L, hd)
        w_o = logical_param(self, "o_proj", (H, hd, D), ("heads", "kv", "embed"), init, pdt)
        return jnp.einsum("bhld,hde->ble", o_BHLd, w_o.astype(dt)), new_cache


def attention_module(cfg: ModelConfig, name: str = "attn") -> nn.Module:
    return (MLA if cfg.attention == "mla" else GQA)(cfg, name=name)
