"""Building blocks: RMSNorm, rotary embeddings (with YaRN), SwiGLU MLP, token embedding.

Every parameter carries logical axis names (`embed, mlp, heads, kv, q_lora, kv_lora, expert,
vocab`); `moe_rl.sharding` maps them to mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_rl.models.config import ModelConfig, YarnConfig
from moe_rl.models.dispatch import swiglu


def logical_param(
    module: nn.Module,
    name: str,
    shape: Sequence[int],
    axes: Sequence[str],
    init: nn.initializers.Initializer,
    dtype,
):
    """A parameter annotated with logical axis names (one per dimension)."""
    assert len(axes) == len(shape), (name, shape, axes)
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


def normal_init(cfg: ModelConfig) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=cfg.initializer_range)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        scale = logical_param(
            self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones, self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature factor 0.1 * m * ln(s) + 1 (Peng et al. 2023, eq. 22)."""
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(dim: int, theta: float, yarn: YarnConfig | None) -> tuple[jax.Array, float]:
    """Inverse frequencies [dim/2] and the cos/sin scale of rotary embeddings (Su et al. 2021).

    With YaRN, low frequencies are interpolated by `factor`, high ones kept, with a linear ramp
    between the correction dims for `beta_fast` / `beta_slow` rotations (YaRN sec. 3.2); the
    cos/sin scale is mscale(factor, mscale) / mscale(factor, mscale_all_dim) as in DeepSeek-V2/V3.
    """
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    inv_freq = 1.0 / (theta**exponents)
    if yarn is None:
        return inv_freq, 1.0

    def correction_dim(num_rotations: float) -> float:
        orig = yarn.original_max_position_embeddings
        return dim * math.log(orig / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(yarn.beta_fast)), 0)
    high = min(math.ceil(correction_dim(yarn.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp  # 1: extrapolate (keep the original frequency), 0: interpolate
    inv_freq = inv_freq / yarn.factor * (1.0 - keep) + inv_freq * keep
    scale = yarn_mscale(yarn.factor, yarn.mscale)
    if yarn.mscale_all_dim:
        scale /= yarn_mscale(yarn.factor, yarn.mscale_all_dim)
    return inv_freq, scale


def apply_rope(
    x_BLHd: jax.Array,
    positions_BL: jax.Array,
    inv_freq: jax.Array,
    scale: float = 1.0,
    interleaved: bool = True,
) -> jax.Array:
    """Rotates feature pairs by position * frequency, in float32.

    interleaved=True rotates pairs (x[2i], x[2i+1]) (DeepSeek's convention); False rotates
    (x[i], x[i + d/2]) (GPT-NeoX, Llama, Qwen2).
    """
    angles_BLf = positions_BL.astype(jnp.float32)[..., None] * inv_freq
    cos = (jnp.cos(angles_BLf) * scale)[:, :, None, :]
    sin = (jnp.sin(angles_BLf) * scale)[:, :, None, :]
    x = x_BLHd.astype(jnp.float32)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)
    else:
        x1, x2 = jnp.split(x, 2, axis=-1)
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHd.dtype)


class Rotary(nn.Module):
    """Rotary embedding configured from the model config."""

    cfg: ModelConfig
    dim: int

    def __call__(self, x_BLHd, positions_BL):
        inv_freq, scale = rope_frequencies(self.dim, self.cfg.rope_theta, self.cfg.rope_scaling)
        return apply_rope(x_BLHd, positions_BL, inv_freq, scale, self.cfg.rope_interleave)


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(x W_gate) * x W_up).

    `swiglu_limit` (DeepSeek-V4's shared experts, HF `DeepseekV4MLP`): x W_gate clipped from
    above and x W_up to [-limit, limit] first; None or 0: no clipping.
    """

    cfg: ModelConfig
    width: int
    swiglu_limit: float | None = None

    @nn.compact
    def __call__(self, x_BLD):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        D = x_BLD.shape[-1]
        init = normal_init(cfg)
        w_gate = logical_param(
            self, "gate", (D, self.width), ("embed", "mlp"), init, cfg.weight_dtype
        )
        w_up = logical_param(self, "up", (D, self.width), ("embed", "mlp"), init, cfg.weight_dtype)
        w_down = logical_param(
            self, "down", (self.width, D), ("mlp", "embed"), init, cfg.weight_dtype
        )
        x = x_BLD.astype(dt)
        h = swiglu(x @ w_gate.astype(dt), x @ w_up.astype(dt), self.swiglu_limit)
        return h @ w_down.astype(dt)


class Embed(nn.Module):
    """Token embedding; `attend` is the tied output head (logits in float32)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = logical_param(
            self,
            "embedding",
            (cfg.vocab_size, cfg.hidden_size),
            ("vocab", "embed"),
            normal_init(cfg),
            cfg.weight_dtype,
        )

    def __call__(self, tokens_BL):
        return jnp.take(self.embedding, tokens_BL, axis=0).astype(self.cfg.compute_dtype)

    def attend(self, x_BLD):
        dt = self.cfg.compute_dtype
        return jnp.einsum("bld,vd->blv", x_BLD.astype(dt), self.embedding.astype(dt)).astype(
            jnp.float32
        )
