"""The DeepSeek-V4 block without attention: sqrtsoftplus and hash routing, swiglu_limit, mHC.

Each piece against a slow float64 reference on random inputs, then module-level parity with
transformers' DeepSeek-V4 classes (PyTorch, CPU, float32; skipped without torch/transformers),
then the config errors.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_rl.models import dispatch
from moe_rl.models.hyper_connections import (
    HyperConnection,
    HyperHead,
    combine,
    expand_streams,
    hyper_residual,
    sinkhorn,
)
from moe_rl.models.layers import RMSNorm
from moe_rl.models.moe import (
    BIAS_COLLECTION,
    HASH_COLLECTION,
    MoE,
    hash_route,
    init_tid2eid,
    route,
)
from tests.utils import make_config

f64 = np.float64

# A tiny V4-like MoE: no dense layers, one shared expert of moe_intermediate_size, no groups.
V4 = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    moe_intermediate_size=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=0,
    num_nextn_predict_layers=0,
    scoring_func="sqrtsoftplus",
    routed_scaling_factor=1.5,
    hc_mult=3,
    swiglu_limit=0.5,
    mlp_layer_types=("hash_moe", "moe"),
)


def v4_config(**overrides):
    return make_config("tiny", **{**V4, **overrides})


# ---------------------------------------------------------------- references (float64)


def sinkhorn_reference(logits, iters, eps):
    """One matrix at a time, sums written out."""
    out = np.empty(logits.shape, f64)
    for idx in np.ndindex(logits.shape[:-2]):
        a = np.exp(logits[idx] - logits[idx].max(-1, keepdims=True))
        m = a / a.sum(-1, keepdims=True) + eps
        n = m.shape[0]
        cols = [sum(m[i, j] for i in range(n)) for j in range(n)]
        m = m / (np.array(cols)[None, :] + eps)
        for _ in range(iters - 1):
            m = m / (m.sum(1, keepdims=True) + eps)
            m = m / (m.sum(0, keepdims=True) + eps)
        out[idx] = m
    return out


def scores_reference(logits, scoring_func):
    logits = np.asarray(logits, f64)
    if scoring_func == "sqrtsoftplus":
        return np.sqrt(np.log1p(np.exp(logits)))
    if scoring_func == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def route_reference(logits, bias, cfg):
    """Token by token: top-k of score + bias (within the top groups), gates from the scores."""
    scores = scores_reference(logits, cfg.scoring_func)
    E, G = scores.shape[1], cfg.n_group
    ids, gates = [], []
    for s in scores:
        choice = s + np.asarray(bias, f64)
        allowed = list(range(E))
        if G > 1:
            groups = choice.reshape(G, E // G)
            best = np.argsort(-np.sort(groups, -1)[:, -2:].sum(-1))[: cfg.topk_group]
            allowed = [e for g in best for e in range(g * E // G, (g + 1) * E // G)]
        chosen = sorted(allowed, key=lambda e: -choice[e])[: cfg.num_experts_per_tok]
        w = s[chosen] / s[chosen].sum()
        ids.append(chosen)
        gates.append(w * cfg.routed_scaling_factor)
    return np.array(ids), np.array(gates)


def experts_reference(x, ids, gates, w_gate, w_up, w_down, limit):
    """y_t = sum_k gate * down(silu(min(g, limit)) * clip(u, +-limit)), token by token."""
    x, w_gate, w_up, w_down = (np.asarray(a, f64) for a in (x, w_gate, w_up, w_down))
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            g, u = x[t] @ w_gate[e], x[t] @ w_up[e]
            if limit:
                g, u = np.minimum(g, limit), np.clip(u, -limit, limit)
            y[t] += float(gates[t, k]) * ((g / (1 + np.exp(-g)) * u) @ w_down[e])
    return y


def unit_rms(v, eps):
    return v / np.sqrt(np.mean(v * v) + eps)


def hyper_connection_reference(x_BLND, fn, base, scale, cfg):
    """Token by token: (collapsed [D], post [N], comb [N,N]) from V4 sec. 2.2."""
    x_BLND, fn, base, scale = (np.asarray(a, f64) for a in (x_BLND, fn, base, scale))
    B, L, N, D = x_BLND.shape
    sig = lambda z: 1 / (1 + np.exp(-z))
    out = []
    for b in range(B):
        for t in range(L):
            mix = unit_rms(x_BLND[b, t].reshape(-1), cfg.rms_norm_eps) @ fn
            pre = sig(mix[:N] * scale[0] + base[:N]) + cfg.hc_eps
            post = 2 * sig(mix[N : 2 * N] * scale[1] + base[N : 2 * N])
            logits = (mix[2 * N :] * scale[2] + base[2 * N :]).reshape(N, N)
            comb = sinkhorn_reference(logits, cfg.hc_sinkhorn_iters, cfg.hc_eps)
            collapsed = sum(pre[j] * x_BLND[b, t, j] for j in range(N))
            out.append((collapsed, post, comb))
    return out


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize("n", [2, 4])
def test_sinkhorn_is_doubly_stochastic(n):
    logits = jax.random.normal(jax.random.key(0), (64, n, n))
    m = np.asarray(sinkhorn(logits, 20, 1e-6))
    assert np.all(m > 0)
    np.testing.assert_allclose(m.sum(-2), 1.0, atol=1e-5)  # the last step normalises columns
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-3)
    m = np.asarray(sinkhorn(logits, 200, 1e-6))
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(m.sum(-2), 1.0, atol=1e-5)


def test_sinkhorn_matches_reference():
    logits = jax.random.normal(jax.random.key(1), (5, 4, 4)) * 2
    for iters in (1, 3, 20):
        ref = sinkhorn_reference(np.asarray(logits, f64), iters, 1e-6)
        np.testing.assert_allclose(np.asarray(sinkhorn(logits, iters, 1e-6)), ref, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # V4: no groups
        dict(n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2),
        dict(routed_scaling_factor=1.0, num_experts_per_tok=3),
    ],
)
def test_sqrtsoftplus_route_matches_reference(overrides):
    cfg = v4_config(**overrides)
    E = cfg.n_routed_experts
    logits = jax.random.normal(jax.random.key(0), (64, E)) * 2
    bias = jax.random.normal(jax.random.key(1), (E,)) * 0.3
    scores, ids, gates = jax.jit(route, static_argnums=2)(logits, bias, cfg)
    ref_ids, ref_gates = route_reference(logits, bias, cfg)
    np.testing.assert_allclose(np.asarray(scores), scores_reference(logits, "sqrtsoftplus"), 1e-5)
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    np.testing.assert_allclose(np.asarray(gates), ref_gates, rtol=1e-5)


def test_sqrtsoftplus_bias_selects_but_does_not_weigh():
    cfg = v4_config()
    logits = jax.random.normal(jax.random.key(0), (32, 8))
    scores, ids, gates = jax.jit(route, static_argnums=2)(logits, jnp.zeros(8).at[5].set(10), cfg)
    assert np.all(np.any(np.asarray(ids) == 5, axis=-1))
    chosen = np.take_along_axis(np.asarray(scores), np.asarray(ids), -1)
    np.testing.assert_allclose(
        np.asarray(gates), chosen / chosen.sum(-1, keepdims=True) * 1.5, 1e-6
    )


def test_hash_route_matches_reference():
    cfg = v4_config()
    V, E, K = cfg.vocab_size, cfg.n_routed_experts, cfg.num_experts_per_tok
    table = init_tid2eid(jax.random.key(0), V, E, K)
    chex.assert_shape(table, (V, K))
    assert table.dtype == jnp.int32
    t = np.asarray(table)
    assert t.min() >= 0 and t.max() < E
    assert all(len(set(row)) == K for row in t)  # K distinct experts per token
    assert len(np.unique(t)) == E  # every expert used
    tokens = jax.random.randint(jax.random.key(1), (40,), 0, V)
    logits = jax.random.normal(jax.random.key(2), (40, E))
    scores, ids, gates = jax.jit(hash_route, static_argnums=3)(logits, tokens, table, cfg)
    s = scores_reference(logits, cfg.scoring_func)
    ids, gates = np.asarray(ids), np.asarray(gates)
    for i, tok in enumerate(np.asarray(tokens)):
        np.testing.assert_array_equal(np.asarray(ids[i]), t[tok])
        w = s[i, t[tok]]
        np.testing.assert_allclose(np.asarray(gates[i]), w / w.sum() * 1.5, rtol=1e-5)


def _routed_inputs(T=48, D=16, F=8, E=8, K=2, seed=0):
    ks = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(ks[0], (T, D))
    ids = jax.lax.top_k(jax.random.normal(ks[1], (T, E)), K)[1]
    gates = jax.random.uniform(ks[2], (T, K))
    w = [
        jax.random.normal(k, s) * 0.4
        for k, s in zip(ks[3:], [(E, D, F), (E, D, F), (E, F, D)], strict=True)
    ]
    return x, ids, gates, *w


@pytest.mark.parametrize("impl", ["sparse", "dense", "ragged"])
def test_swiglu_limit_dispatch_matches_reference(impl):
    x, ids, gates, wg, wu, wd = _routed_inputs()
    limit = 0.7
    pre = np.einsum("td,edf->tef", np.asarray(x), np.asarray(wg))
    assert np.mean(pre > limit) > 0.1  # the clip bites
    experts = jax.jit(dispatch.routed_experts, static_argnames=("impl", "swiglu_limit"))
    y = experts(impl, x, ids, gates, wg, wu, wd, swiglu_limit=limit)
    ref = experts_reference(x, np.asarray(ids), np.asarray(gates), wg, wu, wd, limit)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-4)
    unclipped = experts_reference(x, np.asarray(ids), np.asarray(gates), wg, wu, wd, None)
    assert not np.allclose(unclipped, ref, atol=1e-3)


def test_swiglu_limit_sparse_gradients_match_dense_oracle():
    """The sparse dispatch's hand-written backward, with clipping, against autodiff."""
    x, ids, gates, wg, wu, wd = _routed_inputs(seed=1)
    r = jax.random.normal(jax.random.key(9), x.shape)

    def loss(impl, *args):
        y = dispatch.routed_experts(impl, args[0], ids, *args[1:], swiglu_limit=0.7)
        return jnp.sum(y * r)

    args = (x, gates, wg, wu, wd)
    grad = lambda impl: jax.jit(jax.grad(lambda *a: loss(impl, *a), argnums=range(5)))(*args)
    g_sparse, g_dense = grad("sparse"), grad("dense")
    chex.assert_trees_all_close(g_sparse, g_dense, atol=1e-5)


def test_swiglu_limit_expert_shards_sum_to_all_experts():
    x, ids, gates, wg, wu, wd = _routed_inputs(seed=2)
    full = dispatch.dense_oracle(x, ids, gates, wg, wu, wd, swiglu_limit=0.7)
    local = jax.jit(dispatch.local_experts, static_argnames=("impl", "swiglu_limit"))
    for impl in ("sparse", "dense"):
        parts = [
            local(
                impl,
                x,
                ids,
                gates,
                wg[s : s + 4],
                wu[s : s + 4],
                wd[s : s + 4],
                s,
                swiglu_limit=0.7,
            )
            for s in (0, 4)
        ]
        np.testing.assert_allclose(np.asarray(parts[0] + parts[1]), np.asarray(full), atol=1e-5)


def _streams(cfg, B=2, L=5, seed=0):
    return jax.random.normal(jax.random.key(seed), (B, L, cfg.hc_mult, cfg.hidden_size))


def test_hyper_connection_matches_reference():
    cfg = v4_config(hc_mult=4, hc_sinkhorn_iters=5)
    x = _streams(cfg)
    module = HyperConnection(cfg)
    params = nn.unbox(jax.eval_shape(module.init, jax.random.key(1), x))
    params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
    collapsed, post, comb = map(np.asarray, jax.jit(module.apply)(params, x))
    p = params["params"]
    ref = hyper_connection_reference(x, p["fn"], p["base"], p["scale"], cfg)
    B, L = x.shape[:2]
    for i, (c, po, co) in enumerate(ref):
        b, t = divmod(i, L)
        np.testing.assert_allclose(np.asarray(collapsed[b, t]), c, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(post[b, t]), po, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(comb[b, t]), co, rtol=1e-5, atol=1e-6)
    # Combine: x'[k] = post[k] y + sum_j comb[j, k] x[j].
    y = jax.random.normal(jax.random.key(3), (B, L, cfg.hidden_size))
    new = np.asarray(combine(y, x, post, comb))
    X, Y, P, C = (np.asarray(a, f64) for a in (x, y, post, comb))
    for b in range(B):
        for t in range(L):
            for k in range(cfg.hc_mult):
                want = P[b, t, k] * Y[b, t] + sum(C[b, t, j, k] * X[b, t, j] for j in range(4))
                np.testing.assert_allclose(new[b, t, k], want, rtol=1e-5, atol=1e-5)


def test_hyper_head_matches_reference():
    cfg = v4_config()
    x = _streams(cfg)
    head = HyperHead(cfg)
    params = jax.tree.map(
        lambda p: jax.random.normal(jax.random.key(4), p.shape),
        nn.unbox(jax.eval_shape(head.init, jax.random.key(0), x)),
    )
    out = np.asarray(jax.jit(head.apply)(params, x))
    p = {k: np.asarray(v, f64) for k, v in params["params"].items()}
    X = np.asarray(x, f64)
    for b in range(X.shape[0]):
        for t in range(X.shape[1]):
            mix = unit_rms(X[b, t].reshape(-1), cfg.rms_norm_eps) @ p["fn"]
            pre = 1 / (1 + np.exp(-(mix * p["scale"][0] + p["base"]))) + cfg.hc_eps
            want = sum(pre[j] * X[b, t, j] for j in range(cfg.hc_mult))
            np.testing.assert_allclose(out[b, t], want, rtol=1e-5, atol=1e-5)


def test_hash_moe_state_is_frozen_and_bias_free():
    cfg = v4_config(moe_impl="dense")
    x = jax.random.normal(jax.random.key(0), (2, 6, cfg.hidden_size))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, cfg.vocab_size)
    valid = jnp.ones((2, 6), bool)
    hashed = nn.unbox(
        jax.jit(MoE(cfg, hash_routed=True).init)(jax.random.key(2), x, valid, None, tokens)
    )
    learned = jax.eval_shape(MoE(cfg).init, jax.random.key(2), x, valid)
    learned = nn.unbox(learned)
    assert set(hashed) == {"params", HASH_COLLECTION}
    assert set(learned) == {"params", BIAS_COLLECTION}
    chex.assert_trees_all_equal_shapes(hashed["params"], learned["params"])
    chex.assert_shape(hashed[HASH_COLLECTION]["tid2eid"], (cfg.vocab_size, 2))
    with pytest.raises(ValueError, match="token ids"):
        jax.eval_shape(MoE(cfg, hash_routed=True).init, jax.random.key(2), x, valid)
    # The table is state, outside `params`, so the optimizer never sees it (the router's gradient
    # in a hash layer is checked against transformers below).
    apply = jax.jit(MoE(cfg, hash_routed=True).apply)
    # A recorded routing is compared, never applied, in a hash layer.
    _, aux = apply(hashed, x, valid, jnp.zeros((2, 6, 2), jnp.int32), tokens)
    table = np.asarray(hashed[HASH_COLLECTION]["tid2eid"])
    np.testing.assert_array_equal(np.asarray(aux["expert_ids"]), table[np.asarray(tokens)])
    assert float(aux["replay_differs"]) == 12  # no row of K distinct experts is {0, 0}


# ---------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m4 = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
    config = transformers.DeepseekV4Config(
        vocab_size=V4["vocab_size"],
        hidden_size=V4["hidden_size"],
        moe_intermediate_size=V4["moe_intermediate_size"],
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=16,
        q_lora_rank=16,
        n_routed_experts=V4["n_routed_experts"],
        num_experts_per_tok=V4["num_experts_per_tok"],
        n_shared_experts=1,
        routed_scaling_factor=V4["routed_scaling_factor"],
        hc_mult=V4["hc_mult"],
        hc_sinkhorn_iters=20,
        swiglu_limit=V4["swiglu_limit"],
        mlp_layer_types=list(V4["mlp_layer_types"]),
        layer_types=["sliding_attention"] * 2,
        o_groups=2,
        o_lora_rank=8,
        index_n_heads=2,
        index_head_dim=8,
        index_topk=4,
        sliding_window=8,
        max_position_embeddings=64,
    )
    return torch, m4, config


def _randomise(torch, module, seed=0, std=0.3):
    """Every float parameter/buffer ~ N(0, std); tid2eid a random table (HF zero-fills it)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("tid2eid"):
                t.copy_(torch.randint(0, V4["n_routed_experts"], t.shape, generator=gen))
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * std)
    return module


def _np(t):
    return t.detach().numpy()


def _moe_variables(sd, prefix, hash_routed):
    """Our MoE variables from a DeepseekV4SparseMoeBlock state dict (keys under `prefix`)."""
    F = V4["moe_intermediate_size"]
    gate_up = _np(sd[prefix + "experts.gate_up_proj"])  # [E, 2F, D]: gate rows, then up rows
    params = {
        "router": _np(sd[prefix + "gate.weight"]).T,
        "experts_gate": gate_up[:, :F].transpose(0, 2, 1),
        "experts_up": gate_up[:, F:].transpose(0, 2, 1),
        "experts_down": _np(sd[prefix + "experts.down_proj"]).transpose(0, 2, 1),
        "shared_experts": {
            n: _np(sd[f"{prefix}shared_experts.{n}_proj.weight"]).T for n in ("gate", "up", "down")
        },
    }
    if hash_routed:
        return params, {
            HASH_COLLECTION: {"tid2eid": _np(sd[prefix + "gate.tid2eid"]).astype(np.int32)}
        }
    return params, {BIAS_COLLECTION: {"bias": _np(sd[prefix + "gate.e_score_correction_bias"])}}


def _hc_variables(sd, prefix, head=False):
    names = ("hc_fn", "hc_base", "hc_scale") if head else ("fn", "base", "scale")
    fn, base, scale = (_np(sd[prefix + n]) for n in names)
    return {"fn": fn.T, "base": base, "scale": scale}


def test_routers_match_transformers(hf):
    torch, m4, config = hf
    cfg = v4_config()
    x = torch.randn(2, 7, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    router = _randomise(torch, m4.DeepseekV4TopKRouter(config), seed=3)
    hasher = _randomise(torch, m4.DeepseekV4HashRouter(config), seed=4)
    with torch.no_grad():
        logits, w, idx = router(x)
        _, hw, hidx = hasher(x, tokens)
    xs = _np(x).reshape(-1, cfg.hidden_size)
    _, ids, gates = route(
        xs @ _np(router.weight).T, jnp.asarray(_np(router.e_score_correction_bias)), cfg
    )
    order = np.argsort(_np(idx), -1)  # HF's top-k is unsorted: compare as sets
    np.testing.assert_array_equal(
        np.sort(np.asarray(ids), -1), np.take_along_axis(_np(idx), order, -1)
    )
    ours = np.take_along_axis(np.asarray(gates), np.argsort(np.asarray(ids), -1), -1)
    diff = np.abs(ours - np.take_along_axis(_np(w), order, -1)).max()
    assert diff < 1e-5, diff
    _, hids, hgates = hash_route(
        xs @ _np(hasher.weight).T, _np(tokens).reshape(-1), _np(hasher.tid2eid), cfg
    )
    np.testing.assert_array_equal(np.asarray(hids), _np(hidx))
    np.testing.assert_allclose(np.asarray(hgates), _np(hw), atol=1e-5)


@pytest.mark.parametrize("layer, impl", [(0, "sparse"), (1, "sparse"), (1, "dense")])
def test_sparse_moe_block_matches_transformers(hf, layer, impl):
    """DeepseekV4SparseMoeBlock (hash layer 0, learned layer 1) with swiglu_limit biting."""
    torch, m4, config = hf
    cfg = v4_config(moe_impl=impl)
    hash_routed = config.mlp_layer_types[layer] == "hash_moe"
    block = _randomise(torch, m4.DeepseekV4SparseMoeBlock(config, layer), seed=5 + layer)
    x = torch.randn(2, 9, cfg.hidden_size, generator=torch.Generator().manual_seed(6)) * 2
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = _np(block(x, input_ids=tokens))
        block.experts.limit = block.shared_experts.limit = float("inf")
        want_unclipped = _np(block(x, input_ids=tokens))
    params, state = _moe_variables(block.state_dict(), "", hash_routed)
    valid = jnp.ones((2, 9), bool)
    got, _ = jax.jit(MoE(cfg, hash_routed=hash_routed).apply)(
        jax.tree.map(jnp.asarray, {"params": params, **state}),
        jnp.asarray(_np(x)),
        valid,
        None,
        jnp.asarray(_np(tokens)),
    )
    diff = np.abs(np.asarray(got) - want).max()
    assert diff < 1e-4, diff
    assert np.abs(want - want_unclipped).max() > 1e-2  # the limit changed the output


def test_hyper_connection_and_head_match_transformers(hf):
    torch, m4, config = hf
    cfg = v4_config()
    hc = _randomise(torch, m4.DeepseekV4HyperConnection(config), seed=8)
    head = _randomise(torch, m4.DeepseekV4HyperHead(config), seed=9)
    x = torch.randn(2, 5, cfg.hc_mult, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        post, comb, collapsed = hc(x)
        headed = head(x)
    xj = jnp.asarray(_np(x))
    c, p, m = HyperConnection(cfg).apply({"params": _hc_variables(hc.state_dict(), "")}, xj)
    diffs = [
        np.abs(np.asarray(a) - _np(b)).max() for a, b in ((c, collapsed), (p, post), (m, comb))
    ]
    h = HyperHead(cfg).apply({"params": _hc_variables(head.state_dict(), "", head=True)}, xj)
    diffs.append(np.abs(np.asarray(h) - _np(headed)).max())
    assert max(diffs) < 1e-5, diffs


class _Block(nn.Module):
    """A V4 decoder layer with a linear map standing in for attention: our pieces composed."""

    cfg: object
    hash_routed: bool

    @nn.compact
    def __call__(self, x_BLND, tokens_BL):
        cfg = self.cfg
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, jnp.float32, jnp.float32, name=name)
        attn = lambda h: (nn.Dense(cfg.hidden_size, use_bias=False, name="attn")(h), None)
        x_BLND, _ = hyper_residual(cfg, "attn_hc", x_BLND, lambda h: attn(norm("input_norm")(h)))
        moe = MoE(cfg, hash_routed=self.hash_routed, name="mlp")
        valid_BL = jnp.ones(tokens_BL.shape, bool)
        ffn = lambda h: moe(norm("post_norm")(h), valid_BL, None, tokens_BL)
        return hyper_residual(cfg, "ffn_hc", x_BLND, ffn)[0]


class _Model(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, tokens_BL):
        cfg = self.cfg
        embed = self.param("embed", nn.initializers.normal(1.0), (cfg.vocab_size, cfg.hidden_size))
        x_BLND = expand_streams(embed[tokens_BL], cfg.hc_mult)
        for i, kind in enumerate(cfg.mlp_kinds):
            x_BLND = _Block(cfg, kind == "hash_moe", name=f"layer_{i}")(x_BLND, tokens_BL)
        x_BLD = HyperHead(cfg, name="hc_head")(x_BLND)
        return RMSNorm(cfg.rms_norm_eps, jnp.float32, jnp.float32, name="norm")(x_BLD)


def _model_variables(sd, cfg):
    """Our _Model variables from a (stubbed) DeepseekV4Model state dict, or its gradients."""
    params, state = {"embed": _np(sd["embed_tokens.weight"])}, {}
    for i, kind in enumerate(cfg.mlp_kinds):
        pre = f"layers.{i}."
        moe_params, moe_state = _moe_variables(sd, pre + "mlp.", kind == "hash_moe")
        params[f"layer_{i}"] = {
            "attn": {"kernel": _np(sd[pre + "self_attn.w"]).T},
            "input_norm": {"scale": _np(sd[pre + "input_layernorm.weight"])},
            "post_norm": {"scale": _np(sd[pre + "post_attention_layernorm.weight"])},
            "attn_hc": _hc_variables(sd, pre + "attn_hc."),
            "ffn_hc": _hc_variables(sd, pre + "ffn_hc."),
            "mlp": moe_params,
        }
        for col, value in moe_state.items():
            state.setdefault(col, {})[f"layer_{i}"] = {"mlp": value}
    params["hc_head"] = _hc_variables(sd, "hc_head.", head=True)
    params["norm"] = {"scale": _np(sd["norm.weight"])}
    return jax.tree.map(jnp.asarray, (params, state))


def test_model_without_attention_matches_transformers(hf):
    """DeepseekV4Model (2 layers: hash MoE, learned MoE) with each attention replaced by the
    same linear map: stream expansion, both hyper-connections per layer, MoE, HyperHead, norm;
    outputs and every parameter's gradient (dense expert oracle: the sparse dispatch has its own
    parity test above)."""
    torch, m4, config = hf
    cfg = v4_config(moe_impl="dense")

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(cfg.hidden_size, cfg.hidden_size))

        def forward(self, hidden_states, **kwargs):
            return hidden_states @ self.w.T, None

    model = m4.DeepseekV4Model(config)
    for layer in model.layers:
        layer.self_attn = Linear()
    _randomise(torch, model, seed=11)
    tokens = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    out = model(input_ids=tokens).last_hidden_state
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    (out * r).sum().backward()
    sd = model.state_dict()
    params, state = _model_variables(sd, cfg)
    want_grads, _ = _model_variables(
        {**sd, **{n: p.grad for n, p in model.named_parameters()}}, cfg
    )

    tokens_j, r_j = jnp.asarray(_np(tokens)), jnp.asarray(_np(r))

    def loss(p):
        y = _Model(cfg).apply({"params": p, **state}, tokens_j)
        return jnp.sum(y * r_j), y

    (_, got), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    diff = np.abs(np.asarray(got) - _np(out)).max()
    assert diff < 1e-4, diff
    relative = jax.tree.map(
        lambda g, w: float(jnp.abs(g - w).max() / (jnp.abs(w).max() + 1e-6)), grads, want_grads
    )
    worst = max(jax.tree.leaves(relative))
    assert worst < 1e-4, relative
    # Our init builds the same tree (parameter names and shapes), with the hash table as state.
    init = nn.unbox(jax.eval_shape(_Model(cfg).init, jax.random.key(0), jnp.asarray(_np(tokens))))
    flat = lambda t: {k: np.shape(v) for k, v in traverse_util.flatten_dict(t).items()}
    assert flat(init) == flat({"params": params, **state})


# ---------------------------------------------------------------- config


def test_mlp_kinds_defaults():
    assert make_config("tiny").mlp_kinds == ("dense", "moe", "moe")  # DeepSeek-V3 unchanged
    cfg = v4_config(num_hidden_layers=5, mlp_layer_types=())
    assert cfg.mlp_kinds == ("hash_moe",) * 3 + ("moe",) * 2  # HF's default with mHC on
    cfg = v4_config(mlp_layer_types=["moe", "hash_moe"])  # lists become tuples (hashable)
    assert cfg.mlp_layer_types == ("moe", "hash_moe")
    hash(cfg)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            dict(mlp_layer_types=("moe",)),
            r"model\.mlp_layer_types has 1 entries.*num_hidden_layers=2",
        ),
        (dict(mlp_layer_types=("moe", "hash")), r"model\.mlp_layer_types has \['hash'\]; allowed"),
        (
            dict(
                mlp_layer_types=("hash_moe", "moe"), first_k_dense_replace=1, intermediate_size=64
            ),
            r"model\.mlp_layer_types\[0\]='hash_moe' but the layer is dense",
        ),
        (dict(hc_mult=-1), r"model\.hc_mult=-1 must be >= 0"),
        (dict(hc_sinkhorn_iters=0), r"model\.hc_sinkhorn_iters=0 must be >= 1"),
        (dict(hc_eps=-1.0), r"model\.hc_eps=-1.0 must be >= 0"),
        (dict(swiglu_limit=-1.0), r"model\.swiglu_limit=-1.0 must be >= 0"),
        (dict(scoring_func="relu"), r"model\.scoring_func='relu'; allowed: .*sqrtsoftplus"),
        (
            dict(n_group=8, topk_group=2),
            r"leaves 1 expert per group; sqrtsoftplus routing scores a group by its top-2",
        ),
    ],
)
def test_v4_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        v4_config(**overrides)
