"""The decoder: shapes, causality, KV cache, MLA paths, packing, scan/remat, parameter counts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.models import counting, transformer
from tests.utils import jitted_forward, make_config, random_batch


class ForwardVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes_and_jit_agree(self):
        cfg = make_config("tiny")
        params, state = transformer.init(cfg, jax.random.key(0))
        tokens, positions = random_batch(cfg, batch=2, length=12)
        fwd = self.variant(lambda p, s, t, q: transformer.forward(cfg, p, s, t, q))
        logits, cache, aux = fwd(params, state, tokens, positions)
        chex.assert_shape(logits, (2, 12, cfg.vocab_size))
        chex.assert_shape(aux["mtp_logits"], (cfg.num_nextn_predict_layers, 2, 12, cfg.vocab_size))
        chex.assert_shape(aux["balance_loss"], (cfg.num_moe_layers,))
        assert cache is None
        reference = jitted_forward(cfg)(params, state, tokens, positions)[0]
        chex.assert_trees_all_close(logits, reference, atol=1e-5)
        chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_dense"])
def test_causality(fixture, request):
    cfg, params, state = request.getfixturevalue(fixture)
    tokens, positions = random_batch(cfg, batch=2, length=12)
    t = 7
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
    a = jitted_forward(cfg)(params, state, tokens, positions)[0]
    b = jitted_forward(cfg)(params, state, changed, positions)[0]
    chex.assert_trees_all_close(a[:, :t], b[:, :t], atol=1e-6)
    assert float(jnp.abs(a[:, t:] - b[:, t:]).max()) > 1e-4


def _decode_incrementally(cfg, params, state, tokens, positions, prefill, max_len=24):
    cache = transformer.init_cache(cfg, tokens.shape[0], max_len)
    out, cache, _ = jitted_forward(cfg)(
        params, state, tokens[:, :prefill], positions[:, :prefill], cache=cache
    )
    outs = [out]
    for i in range(prefill, tokens.shape[1]):
        out, cache, _ = jitted_forward(cfg)(
            params, state, tokens[:, i : i + 1], positions[:, i : i + 1], cache=cache
        )
        outs.append(out)
    assert int(cache["index"]) == tokens.shape[1]
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("tiny", dict()),
        ("tiny", dict(mla_absorb=False)),
        ("tiny", dict(q_lora_rank=None, scan_layers=True)),
        ("tiny_dense", dict()),
        ("tiny_dense", dict(scan_layers=True, attention_bias=True)),
    ],
)
def test_cached_decoding_equals_full_forward(preset, overrides):
    cfg = make_config(preset, **overrides)
    params, state = transformer.init(cfg, jax.random.key(1))
    tokens, positions = random_batch(cfg, batch=2, length=10)
    full = jitted_forward(cfg)(params, state, tokens, positions)[0]
    incremental = _decode_incrementally(cfg, params, state, tokens, positions, prefill=4)
    chex.assert_trees_all_close(incremental, full, atol=2e-5)


def test_mla_absorbed_equals_naive(tiny):
    cfg, params, state = tiny
    naive = make_config("tiny", mla_absorb=False)
    tokens, positions = random_batch(cfg, batch=2, length=10)
    a = _decode_incrementally(cfg, params, state, tokens, positions, prefill=4)
    b = _decode_incrementally(naive, params, state, tokens, positions, prefill=4)
    chex.assert_trees_all_close(a, b, atol=1e-5)


def test_mla_cache_holds_only_latent_and_rope_key(tiny):
    cfg, _, _ = tiny
    cache = transformer.init_cache(cfg, 2, 16)
    layer = cache["moe"][0]
    assert set(layer) == {"latent", "k_rope"}
    chex.assert_shape(layer["latent"], (2, 16, cfg.kv_lora_rank))
    chex.assert_shape(layer["k_rope"], (2, 16, cfg.qk_rope_head_dim))


def test_left_padded_prompts_decode_like_unpadded(tiny):
    """Padding (segment 0) in the cache is invisible: a left-padded row equals the bare row."""
    cfg, params, state = tiny
    tokens, _ = random_batch(cfg, batch=1, length=6)
    bare = jitted_forward(cfg)(params, state, tokens, jnp.arange(6)[None])[0]
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], axis=1)
    positions = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.arange(6)[None]], axis=1)
    segments = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 6), jnp.int32)], axis=1)
    cache = transformer.init_cache(cfg, 1, 12)
    out, _, _ = jitted_forward(cfg)(params, state, padded, positions, segments, cache=cache)
    chex.assert_trees_all_close(out[:, 3:], bare, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_dense"])
def test_segment_ids_isolate_documents(fixture, request):
    cfg, params, state = request.getfixturevalue(fixture)
    doc_a, _ = random_batch(cfg, batch=1, length=5, seed=3)
    doc_b, _ = random_batch(cfg, batch=1, length=7, seed=4)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    positions = jnp.concatenate([jnp.arange(5), jnp.arange(7)])[None]
    segments = jnp.array([[1] * 5 + [2] * 7])
    out = jitted_forward(cfg, mtp=False)(params, state, packed, positions, segments)[0]
    alone_a = jitted_forward(cfg, mtp=False)(params, state, doc_a, jnp.arange(5)[None])[0]
    alone_b = jitted_forward(cfg, mtp=False)(params, state, doc_b, jnp.arange(7)[None])[0]
    chex.assert_trees_all_close(out[:, :5], alone_a, atol=1e-5)
    chex.assert_trees_all_close(out[:, 5:], alone_b, atol=1e-5)


def _stack_layers(tree, n):
    """Unrolled layer params {'0': .., '1': ..} -> the scanned layout (stacked on axis 0)."""
    return {
        "scan": {
            "layer": jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[str(i)] for i in range(n)])
        }
    }


def test_scan_and_remat_equal_unrolled():
    cfg = make_config("tiny", num_nextn_predict_layers=0)
    params, state = transformer.init(cfg, jax.random.key(0))
    scanned = make_config("tiny", num_nextn_predict_layers=0, scan_layers=True, remat=True)
    stack = lambda tree: {
        k: _stack_layers(v, cfg.num_dense_layers if k == "dense_layers" else cfg.num_moe_layers)
        if k.endswith("_layers")
        else v
        for k, v in tree.items()
    }
    s_params = stack(params)
    s_state = {"moe_bias": stack(state["moe_bias"])}
    chex.assert_trees_all_equal_shapes(s_params, transformer.init(scanned, jax.random.key(0))[0])
    tokens, positions = random_batch(cfg, batch=2, length=9)

    def loss(p, s, c):
        logits, _, aux = transformer.forward(c, p, s, tokens, positions)
        return jnp.mean(logits**2), aux["expert_counts"]

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (l_u, counts_u), g_u = grad(params, state, cfg)
    (l_s, counts_s), g_s = grad(s_params, s_state, scanned)
    chex.assert_trees_all_close(l_u, l_s, rtol=1e-5)
    chex.assert_trees_all_close(counts_u, counts_s)
    chex.assert_trees_all_close(stack(g_u), g_s, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("tiny", dict()),
        ("tiny", dict(q_lora_rank=None, tie_word_embeddings=True, num_nextn_predict_layers=2)),
        ("tiny", dict(first_k_dense_replace=0, n_shared_experts=2, scan_layers=True)),
        ("small", dict()),
        ("tiny_dense", dict()),
        ("tiny_dense", dict(attention_bias=True, tie_word_embeddings=True)),
    ],
)
def test_param_counts_match_tree(preset, overrides):
    cfg = make_config(preset, **overrides)
    shapes = jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))[0]
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    total = sum(int(np.prod(x.shape)) for _, x in leaves)
    counts = counting.param_counts(cfg)
    assert counts["total"] == total
    # Activated, derived from the tree: drop MTP modules, keep K of E routed experts.
    main = [(p, x) for p, x in leaves if not jax.tree_util.keystr(p).startswith("['mtp_")]
    activated = 0
    for path, x in main:
        size = int(np.prod(x.shape))
        if "experts_" in jax.tree_util.keystr(path) and "shared" not in jax.tree_util.keystr(path):
            size = size // cfg.n_routed_experts * cfg.num_experts_per_tok
        activated += size
    assert counts["activated"] == activated
    if cfg.is_moe:
        assert counts["activated"] < counts["total"] - counts["mtp"]


def test_logical_axes_cover_every_param(tiny):
    cfg, params, state = tiny
    axes, state_axes = transformer.logical_axes(cfg)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    specs = jax.tree.leaves(axes, is_leaf=is_spec)
    arrays = jax.tree.leaves(params)
    assert len(specs) == len(arrays)
    for spec, array in zip(specs, arrays, strict=True):
        assert len(spec) == array.ndim and all(isinstance(a, str) for a in spec)
    assert all(
        s == jax.sharding.PartitionSpec("expert")
        for s in jax.tree.leaves(state_axes, is_leaf=is_spec)
    )
