"""Router, balance loss and the MoE layer against slow, obviously-correct references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.models import transformer
from moe_rl.models.moe import route, sequence_balance_loss
from tests.utils import jitted_forward, make_config, random_batch


def route_reference(logits, bias, cfg):
    """One token at a time, straight from DeepSeek-V3 eqs. 13-16 (and V2 for softmax)."""
    logits = np.asarray(logits, np.float64)
    if cfg.scoring_func == "sigmoid":
        scores = 1 / (1 + np.exp(-logits))
    else:
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    E, G = logits.shape[1], cfg.n_group
    ids, gates = [], []
    for s in scores:
        choice = s + np.asarray(bias)
        allowed = list(range(E))
        if G > 1:
            groups = choice.reshape(G, E // G)
            if cfg.scoring_func == "sigmoid":
                group_score = np.sort(groups, -1)[:, -2:].sum(-1)
            else:
                group_score = groups.max(-1)
            best = np.argsort(-group_score)[: cfg.topk_group]
            allowed = [e for g in best for e in range(g * E // G, (g + 1) * E // G)]
        chosen = sorted(allowed, key=lambda e: -choice[e])[: cfg.num_experts_per_tok]
        w = s[chosen]
        if cfg.norm_topk_prob:
            w = w / w.sum()
        ids.append(chosen)
        gates.append(w * cfg.routed_scaling_factor)
    return np.array(ids), np.array(gates)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # sigmoid, 4 groups keep 2, top-2
        dict(n_group=1, topk_group=1, num_experts_per_tok=3),
        dict(scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0),
        dict(n_routed_experts=16, n_group=4, topk_group=1, num_experts_per_tok=4),
    ],
)
def test_route_matches_reference(overrides):
    cfg = make_config("tiny", **overrides)
    E = cfg.n_routed_experts
    logits = jax.random.normal(jax.random.key(0), (64, E)) * 2
    bias = jax.random.normal(jax.random.key(1), (E,)) * 0.3
    scores, ids, gates = route(logits, bias, cfg)
    ref_ids, ref_gates = route_reference(logits, bias, cfg)
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    np.testing.assert_allclose(np.asarray(gates), ref_gates, rtol=1e-5)
    chex.assert_shape(scores, (64, E))


def test_bias_selects_but_does_not_weigh():
    cfg = make_config("tiny", n_group=1, topk_group=1)
    logits = jax.random.normal(jax.random.key(0), (32, 8))
    _, ids0, _ = route(logits, jnp.zeros(8), cfg)
    bias = jnp.zeros(8).at[5].set(10.0)  # expert 5 becomes everyone's choice
    scores, ids, gates = route(logits, bias, cfg)
    assert not np.array_equal(np.asarray(ids0), np.asarray(ids))
    assert np.all(np.any(np.asarray(ids) == 5, axis=-1))
    chosen = np.take_along_axis(np.asarray(scores), np.asarray(ids), -1)  # unbiased scores
    expected = chosen / chosen.sum(-1, keepdims=True) * cfg.routed_scaling_factor
    np.testing.assert_allclose(np.asarray(gates), expected, rtol=1e-6)


def test_sequence_balance_loss_matches_loop():
    B, L, E, K = 3, 10, 8, 2
    scores = jax.nn.sigmoid(jax.random.normal(jax.random.key(0), (B, L, E)))
    ids = jax.lax.top_k(scores, K)[1]
    valid = jnp.arange(L)[None] < jnp.array([10, 7, 3])[:, None]
    got = sequence_balance_loss(scores, ids, valid)
    total = 0.0
    for b in range(B):
        T = int(valid[b].sum())
        f, p = np.zeros(E), np.zeros(E)
        for t in range(T):
            for e in np.asarray(ids[b, t]):
                f[e] += E / (K * T)
            s = np.asarray(scores[b, t])
            p += s / s.sum() / T
        total += (f * p).sum()
    np.testing.assert_allclose(float(got), total / B, rtol=1e-5)
    # Perfect balance gives 1: f_i = 1 and P_i = 1/E.
    uniform = jnp.ones((1, 4, 4))
    balanced_ids = jnp.array([[[0], [1], [2], [3]]])
    np.testing.assert_allclose(
        float(sequence_balance_loss(uniform, balanced_ids, jnp.ones((1, 4)))), 1.0
    )


@pytest.mark.parametrize(
    "overrides", [dict(), dict(n_group=1, topk_group=1, num_experts_per_tok=3)]
)
def test_sparse_model_equals_dense_oracle(overrides):
    """Logits, aux and parameter gradients of the whole model: sparse dispatch vs oracle."""
    sparse = make_config("tiny", **overrides)
    dense = make_config("tiny", moe_impl="dense", **overrides)
    params, state = transformer.init(sparse, jax.random.key(3))
    state = jax.tree.map(lambda b: jax.random.normal(jax.random.key(4), b.shape) * 0.1, state)
    tokens, positions = random_batch(sparse, batch=3, length=16)

    def loss(p, cfg):
        logits, _, aux = transformer.forward(cfg, p, state, tokens, positions)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + aux["balance_loss"].sum(), aux

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l_s, aux_s), g_s = grad(params, sparse)
    (l_d, aux_d), g_d = grad(params, dense)
    chex.assert_trees_all_close(l_s, l_d, rtol=1e-5)
    chex.assert_trees_all_close(aux_s, aux_d, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(g_s, g_d, rtol=1e-4, atol=1e-6)


def test_expert_counts_exclude_padding(tiny):
    cfg, params, state = tiny
    tokens, positions = random_batch(cfg, batch=2, length=10)
    segments = jnp.array([[1] * 10, [1] * 6 + [0] * 4])
    _, _, aux = jitted_forward(cfg)(params, state, tokens, positions, segments)
    chex.assert_shape(aux["expert_counts"], (cfg.num_moe_layers, cfg.n_routed_experts))
    np.testing.assert_allclose(
        np.asarray(aux["expert_counts"]).sum(-1), 16 * cfg.num_experts_per_tok
    )
