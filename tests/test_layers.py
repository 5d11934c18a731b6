"""RMSNorm and rotary embeddings (both pair conventions, YaRN) against direct formulas."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.models.config import YarnConfig
from moe_rl.models.layers import RMSNorm, apply_rope, rope_frequencies, yarn_mscale


def test_rmsnorm_matches_formula():
    x = jax.random.normal(jax.random.key(0), (3, 5, 16)) * 3 + 1
    norm = RMSNorm(1e-6, jnp.float32, jnp.float32)
    scale = jax.random.normal(jax.random.key(2), (16,))
    params = {"params": {"scale": scale}}
    expected = np.asarray(x) / np.sqrt(np.mean(np.asarray(x) ** 2, -1, keepdims=True) + 1e-6)
    chex.assert_trees_all_close(norm.apply(params, x), expected * np.asarray(scale), rtol=1e-5)


def _rope_reference(x, pos, inv_freq, interleaved):
    """Rotation of each pair by an explicit 2x2 matrix, one pair at a time."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    d = x.shape[-1]
    for i in range(d // 2):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
        ang = np.asarray(pos, np.float64)[:, :, None] * float(inv_freq[i])
        c, s = np.cos(ang), np.sin(ang)
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., a] * s + x[..., b] * c
    return out


def test_rope_conventions_match_pairwise_rotation():
    x = jax.random.normal(jax.random.key(0), (2, 6, 3, 8))
    pos = jnp.array([[0, 1, 2, 3, 4, 5], [7, 3, 9, 0, 1, 100]])
    inv_freq, scale = rope_frequencies(8, 10000.0, None)
    assert scale == 1.0
    for interleaved in (True, False):
        got = apply_rope(x, pos, inv_freq, 1.0, interleaved)
        chex.assert_trees_all_close(got, _rope_reference(x, pos, inv_freq, interleaved), atol=1e-5)


def test_rope_scores_depend_only_on_offset():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
    inv_freq, _ = rope_frequencies(16, 10000.0, None)

    def score(pq, pk):
        rq = apply_rope(q, jnp.array([[pq]]), inv_freq)
        rk = apply_rope(k, jnp.array([[pk]]), inv_freq)
        return float(jnp.sum(rq * rk))

    np.testing.assert_allclose(score(5, 2), score(13, 10), rtol=1e-4)


def test_yarn_frequencies_and_mscale():
    dim, theta = 64, 10000.0
    yarn = YarnConfig(
        factor=8.0, original_max_position_embeddings=256, mscale=1.0, mscale_all_dim=0.7
    )
    plain, _ = rope_frequencies(dim, theta, None)
    scaled, scale = rope_frequencies(dim, theta, yarn)
    # Correction range from YaRN: dims rotating more than beta_fast times keep their frequency,
    # fewer than beta_slow times are interpolated by the factor.
    corr = lambda r: dim * math.log(256 / (r * 2 * math.pi)) / (2 * math.log(theta))
    low, high = math.floor(corr(32.0)), math.ceil(corr(1.0))
    np.testing.assert_allclose(scaled[:low], plain[:low], rtol=1e-6)
    np.testing.assert_allclose(scaled[high + 1 :], plain[high + 1 :] / 8.0, rtol=1e-6)
    assert np.all(scaled[low : high + 1] <= plain[low : high + 1] + 1e-12)
    expected = (0.1 * math.log(8.0) + 1) / (0.1 * 0.7 * math.log(8.0) + 1)
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    assert yarn_mscale(1.0, 3.0) == 1.0
