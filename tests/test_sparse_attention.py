"""DeepSeek Sparse Attention (DeepSeek-V3.2, arXiv 2512.02556 sec. 2.1): the lightning indexer
and top-k attention against a slow reference written with loops, cached decode against the full
forward, the causal mask and k above the visible keys, and the config checks."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.models import counting, transformer
from moe_rl.models.attention import MLA
from moe_rl.models.config import ModelConfig, preset
from tests.utils import jitted_forward, make_config, random_batch

# 16 indexer heads: a key whose every head's ReLU is 0 (a tie at score 0) is a 1 in 65536 event.
SPARSE = dict(index_topk=3, index_n_heads=16, index_head_dim=12)


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x, pos, dim, theta, interleaved):
    """Rotates x[..., :dim] (x: [..., dim] at position pos) one pair at a time."""
    out = np.array(x, dtype=np.float64)
    for i in range(dim // 2):
        angle = pos / theta ** (2 * i / dim)
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + dim // 2)
        out[..., a] = x[..., a] * math.cos(angle) - x[..., b] * math.sin(angle)
        out[..., b] = x[..., b] * math.cos(angle) + x[..., a] * math.sin(angle)
    return out


def reference_dsa(cfg: ModelConfig, p: dict, x_BLD: np.ndarray) -> np.ndarray:
    """MLA where query t attends to its index_topk visible keys of highest index score
    I[t, s] = sum_j w[t, j] ReLU(q[t, j] . k[s]), written out token by token (float64)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    B, L, D = x_BLD.shape
    H, dn, dr, c = (
        cfg.num_attention_heads,
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.kv_lora_rank,
    )
    J, di, eps = cfg.index_n_heads, cfg.index_head_dim, cfg.rms_norm_eps
    ix = p["indexer"]
    out = np.zeros((B, L, D))
    for b in range(B):
        x = x_BLD[b].astype(np.float64)
        q_lat = [_rms(x[t] @ p["q_a_proj"], p["q_a_norm"]["scale"], eps) for t in range(L)]
        kv = [x[t] @ p["kv_a_proj"] for t in range(L)]
        latent = [_rms(kv[t][:c], p["kv_a_norm"]["scale"], eps) for t in range(L)]
        k_rope = [_rope(kv[t][c:], t, dr, cfg.rope_theta, True) for t in range(L)]
        index_k = []
        for t in range(L):
            k = x[t] @ ix["wk"]
            k = (k - k.mean()) / np.sqrt(k.var() + 1e-6) * ix["k_norm_scale"] + ix["k_norm_bias"]
            index_k.append(np.concatenate([_rope(k[:dr], t, dr, cfg.rope_theta, False), k[dr:]]))
        for t in range(L):
            scores = {}
            w = x[t] @ ix["weights_proj"] / math.sqrt(J)
            for s in range(t + 1):  # causal: only keys s <= t are candidates
                total = 0.0
                for j in range(J):
                    q = q_lat[t] @ ix["wq_b"][:, j]
                    q = np.concatenate([_rope(q[:dr], t, dr, cfg.rope_theta, False), q[dr:]])
                    total += w[j] * max(0.0, q @ index_k[s] / math.sqrt(di))
                scores[s] = total
            chosen = sorted(scores, key=lambda s: -scores[s])[: cfg.index_topk]
            heads = []
            for h in range(H):
                q = q_lat[t] @ p["q_b_proj"][:, h]
                q_nope, q_rope = q[:dn], _rope(q[dn:], t, dr, cfg.rope_theta, True)
                logits = []
                for s in chosen:
                    k_nope = latent[s] @ p["kv_b_proj"][:, h, :dn]
                    logits.append((q_nope @ k_nope + q_rope @ k_rope[s]) / math.sqrt(dn + dr))
                probs = np.exp(np.array(logits) - max(logits))
                probs /= probs.sum()
                v = [latent[s] @ p["kv_b_proj"][:, h, dn:] for s in chosen]
                heads.append(sum(pr * vs for pr, vs in zip(probs, v, strict=True)))
            out[b, t] = np.einsum("hv,hvd->d", np.stack(heads), p["o_proj"])
    return out


@pytest.mark.parametrize("topk", [1, 3, 20])  # 20 > every query's visible keys: dense MLA
def test_sparse_mla_matches_the_loop_reference(topk):
    cfg = make_config("tiny", **{**SPARSE, "index_topk": topk})
    B, L = 2, 9
    x = jax.random.normal(jax.random.key(0), (B, L, cfg.hidden_size))
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    module = MLA(cfg)
    params = nn.meta.unbox(module.init(jax.random.key(1), x, positions, mask))["params"]
    # Larger weights than the init's: index scores and attention far from uniform.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(
        tree,
        [
            1 + 0.1 * jax.random.normal(k, a.shape)
            if a.ndim == 1
            else 0.3 * jax.random.normal(k, a.shape)
            for k, a in zip(keys, leaves, strict=True)
        ],
    )
    fast, _ = module.apply({"params": params}, x, positions, mask)
    expected = reference_dsa(cfg, params, np.asarray(x))
    np.testing.assert_allclose(np.asarray(fast), expected, atol=2e-5, rtol=1e-5)
    if topk < L:  # the selection is active: dense MLA differs
        dense, _ = MLA(make_config("tiny")).apply(
            {"params": {k: v for k, v in params.items() if k != "indexer"}}, x, positions, mask
        )
        assert float(jnp.abs(dense - fast).max()) > 1e-3


@pytest.mark.parametrize("overrides", [dict(), dict(mla_absorb=False), dict(scan_layers=True)])
def test_cached_decode_token_by_token_equals_full_forward(overrides):
    cfg = make_config("tiny_v32", index_topk=3, **overrides)
    params, state = transformer.init(cfg, jax.random.key(1))
    tokens, positions = random_batch(cfg, batch=2, length=10)
    full = jitted_forward(cfg)(params, state, tokens, positions)[0]
    cache = transformer.init_cache(cfg, 2, 16)
    outs = []
    for i in range(10):  # from the first token on: every query from the cache
        out, cache, _ = jitted_forward(cfg)(
            params, state, tokens[:, i : i + 1], positions[:, i : i + 1], cache=cache
        )
        outs.append(out)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, atol=2e-5)
    layer = cache["moe"]["index_k"][0] if cfg.scan_layers else cache["moe"][0]["index_k"]
    chex.assert_shape(layer, (2, 16, cfg.index_head_dim))


def _without_indexer(tree):
    if isinstance(tree, dict):
        return {k: _without_indexer(v) for k, v in tree.items() if k != "indexer"}
    return tree


def test_queries_with_at_most_k_visible_keys_attend_densely_and_the_future_is_never_chosen():
    """index_topk=4: the first 4 positions see <= 4 keys, so equal dense MLA; later ones differ.
    Changing token t changes nothing before t (no future key is ever selected)."""
    cfg = make_config("tiny_v32", index_topk=4)
    params, state = transformer.init(cfg, jax.random.key(0))
    tokens, positions = random_batch(cfg, batch=2, length=12)
    sparse = jitted_forward(cfg, mtp=False)(params, state, tokens, positions)[0]
    dense_cfg = make_config("tiny")
    dense = jitted_forward(dense_cfg, mtp=False)(
        _without_indexer(params), state, tokens, positions
    )[0]
    chex.assert_trees_all_close(sparse[:, :4], dense[:, :4], atol=1e-6)
    assert float(jnp.abs(sparse[:, 4:] - dense[:, 4:]).max()) > 1e-4
    t = 7
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
    other = jitted_forward(cfg, mtp=False)(params, state, changed, positions)[0]
    chex.assert_trees_all_close(sparse[:, :t], other[:, :t], atol=1e-6)


def test_sparse_model_trains_and_the_indexer_gets_no_gradient_from_the_loss():
    cfg = make_config("tiny_v32", index_topk=4)
    params, state = transformer.init(cfg, jax.random.key(0))
    tokens, positions = random_batch(cfg, batch=2, length=12)

    def loss(p):
        logits = transformer.forward(cfg, p, state, tokens, positions, mtp=False)[0]
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

    grads = jax.jit(jax.grad(loss))(params)
    chex.assert_tree_all_finite(grads)
    indexer = grads["moe_layers"]["0"]["attn"]["indexer"]
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(indexer))
    assert float(jnp.abs(grads["moe_layers"]["0"]["attn"]["q_b_proj"]).max()) > 0


def test_parameter_count_includes_the_indexer():
    cfg = make_config("tiny_v32")
    params, _ = transformer.init(cfg, jax.random.key(0))
    total = sum(x.size for x in jax.tree.leaves(params))
    assert counting.param_counts(cfg)["total"] == total
    assert total > counting.param_counts(make_config("tiny"))["total"]


def test_dense_mla_is_unchanged_when_the_indexer_is_off():
    for off in (0, None):
        cd = preset("tiny")
        cd.index_topk = off
        cfg = ModelConfig.from_config(cd)
        assert cfg.index_topk == 0
        assert set(transformer.init_cache(cfg, 1, 4)["moe"][0]) == {"latent", "k_rope"}
        params, _ = transformer.init(cfg, jax.random.key(0))
        assert "indexer" not in params["moe_layers"]["0"]["attn"]


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(index_topk=-1), ["model.index_topk"]),
        (dict(index_n_heads=0), ["model.index_n_heads"]),
        (dict(index_head_dim=4), ["model.index_head_dim", "model.qk_rope_head_dim"]),
        (dict(q_lora_rank=None), ["model.q_lora_rank", "model.index_topk"]),
        (
            dict(attention="gqa", num_key_value_heads=2, head_dim=16),
            ["model.attention", "model.index_topk"],
        ),
    ],
)
def test_invalid_sparse_attention_configs_name_their_fields(overrides, named):
    with pytest.raises(ValueError) as err:
        make_config("tiny_v32", **overrides)
    for name in named:
        assert name in str(err.value)


def test_cache_bytes_per_token_count_the_indexer_key():
    from moe_rl.summary import kv_cache_bytes_per_token

    cfg = make_config("tiny_v32")
    cache = transformer.init_cache(cfg, 2, 16)
    layers = [cache["dense"], cache["moe"]]
    per_token = sum(x.nbytes for x in jax.tree.leaves(layers)) // (2 * 16)
    assert kv_cache_bytes_per_token(cfg)["cache"] == per_token
    assert per_token > kv_cache_bytes_per_token(make_config("tiny"))["cache"]
