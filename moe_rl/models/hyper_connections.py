"""Manifold-constrained hyper-connections (mHC; DeepSeek-V4 sec. 2.2, Xie et al. 2026).

The residual stream is widened to N = hc_mult streams x [B,L,N,D]. Around each sublayer f
(attention or MoE) a `HyperConnection` computes, per token, from the RMS-normalised flattened
streams x~ [N*D] and one linear map W:

    pre  [N]   = sigmoid(a_pre * x~ W_pre + b_pre) + eps      collapse weights (f's input)
    post [N]   = 2 sigmoid(a_post * x~ W_post + b_post)       expand weights (f's output)
    comb [N,N] = Sinkhorn(a_comb * x~ W_comb + b_comb)        residual mixing

and the streams become x'[k] = post[k] f(sum_j pre[j] x[j]) + sum_j comb[j,k] x[j]. Projecting
comb onto the doubly-stochastic matrices (Sinkhorn-Knopp) keeps the residual mixing
non-expansive however deep the stack. The streams start as N copies of the embedding
(`expand_streams`) and a `HyperHead` collapses them before the final norm (HF `DeepseekV4Model`).

Everything here runs in float32, with float32 parameters whatever `param_dtype` (HF keeps
`attn_hc`, `ffn_hc`, `hc_head` in float32; the V4 reference mixes in float32 too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_rl.models.config import ModelConfig
from moe_rl.models.layers import logical_param, normal_init


def sinkhorn(logits_NN: jax.Array, iters: int, eps: float) -> jax.Array:
    """Sinkhorn-Knopp projection of exp(logits) onto doubly-stochastic matrices [..., N, N].

    As the V4 kernel (HF `DeepseekV4HyperConnection`): a row softmax plus eps, a column
    normalisation, then iters - 1 rounds of row and column normalisations, each denominator
    floored by eps. The result's columns sum to 1 (up to eps), its rows nearly so.
    """
    m = jax.nn.softmax(logits_NN.astype(jnp.float32), axis=-1) + eps
    m = m / (m.sum(-2, keepdims=True) + eps)

    def rows_then_columns(_, m):
        m = m / (m.sum(-1, keepdims=True) + eps)
        return m / (m.sum(-2, keepdims=True) + eps)

    return jax.lax.fori_loop(0, iters - 1, rows_then_columns, m)


def _unit_rms(x: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) over the last axis, in float32 (HF `DeepseekV4UnweightedRMSNorm`)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def expand_streams(x_BLD: jax.Array, n: int) -> jax.Array:
    """The N residual streams [B,L,N,D] at the bottom of the stack: copies of the embedding."""
    B, L, D = x_BLD.shape
    return jnp.broadcast_to(x_BLD[:, :, None, :], (B, L, n, D))


def _mixes(module: nn.Module, cfg: ModelConfig, x_BLND: jax.Array, n_out: int, n_scales: int):
    """x~ W * (scale) + base: the flattened, normalised streams through the module's map."""
    B, L, N, D = x_BLND.shape
    fn = logical_param(module, "fn", (N * D, n_out), (None, None), normal_init(cfg), jnp.float32)
    base = logical_param(module, "base", (n_out,), (None,), nn.initializers.zeros, jnp.float32)
    scale = logical_param(module, "scale", (n_scales,), (None,), nn.initializers.ones, jnp.float32)
    flat_BLM = _unit_rms(x_BLND.reshape(B, L, N * D), cfg.rms_norm_eps)
    return flat_BLM @ fn, base, scale


class HyperConnection(nn.Module):
    """The mHC weights of one sublayer (HF `DeepseekV4HyperConnection`): returns f's input
    (the streams collapsed by pre) [B,L,D], post [B,L,N] and comb [B,L,N,N], in float32.

    Parameters: `fn` [N*D, (2+N)N] (HF's `fn` transposed), `base` [(2+N)N], `scale` [3]
    (pre, post, comb).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLND):
        cfg = self.cfg
        B, L, N, D = x_BLND.shape
        mix_BLM, base, scale = _mixes(self, cfg, x_BLND, (2 + N) * N, 3)
        pre_BLN = jax.nn.sigmoid(mix_BLM[..., :N] * scale[0] + base[:N]) + cfg.hc_eps
        post_BLN = 2 * jax.nn.sigmoid(mix_BLM[..., N : 2 * N] * scale[1] + base[N : 2 * N])
        comb_logits = mix_BLM[..., 2 * N :] * scale[2] + base[2 * N :]
        comb_BLNN = sinkhorn(comb_logits.reshape(B, L, N, N), cfg.hc_sinkhorn_iters, cfg.hc_eps)
        collapsed_BLD = jnp.einsum("bln,blnd->bld", pre_BLN, x_BLND.astype(jnp.float32))
        return collapsed_BLD.astype(x_BLND.dtype), post_BLN, comb_BLNN


def combine(y_BLD, x_BLND, post_BLN, comb_BLNN) -> jax.Array:
    """The new streams x'[k] = post[k] y + sum_j comb[j,k] x[j] (comb read by its first index,
    HF `DeepseekV4DecoderLayer`), computed in float32 and returned in x's dtype."""
    f32 = jnp.float32
    spread_BLND = post_BLN[..., None] * y_BLD.astype(f32)[:, :, None, :]
    mixed_BLND = jnp.einsum("bljk,bljd->blkd", comb_BLNN, x_BLND.astype(f32))
    return (spread_BLND + mixed_BLND).astype(x_BLND.dtype)


def hyper_residual(
    cfg: ModelConfig,
    name: str,
    x_BLND: jax.Array,
    sublayer: Callable[[jax.Array], tuple[jax.Array, Any]],
) -> tuple[jax.Array, Any]:
    """One mHC-wrapped sublayer, for a decoder layer's compact method: collapse the streams,
    run `sublayer` (block input [B,L,D] -> (output [B,L,D], anything)), combine. Returns the
    new streams and the sublayer's second output. `name`: the HyperConnection's (e.g. 'attn_hc').
    """
    x_BLD, post_BLN, comb_BLNN = HyperConnection(cfg, name=name)(x_BLND)
    y_BLD, extra = sublayer(x_BLD)
    return combine(y_BLD, x_BLND, post_BLN, comb_BLNN), extra


class HyperHead(nn.Module):
    """The final collapse of the streams [B,L,N,D] -> [B,L,D] before the final norm (HF
    `DeepseekV4HyperHead`): sum_j (sigmoid(a x~ W + b)[j] + eps) x[j].

    Parameters: `fn` [N*D, N] (HF's `hc_fn` transposed), `base` [N], `scale` [1].
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLND):
        N = x_BLND.shape[2]
        mix_BLN, base, scale = _mixes(self, self.cfg, x_BLND, N, 1)
        pre_BLN = jax.nn.sigmoid(mix_BLN * scale[0] + base) + self.cfg.hc_eps
        out_BLD = jnp.einsum("bln,blnd->bld", pre_BLN, x_BLND.astype(jnp.float32))
        return out_BLD.astype(x_BLND.dtype)
