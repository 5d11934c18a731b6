"""The decoder with DeepSeek-V4's mHC and hash-routed MoE layers (with MLA attention; V4's
own: tests/test_v4_model.py): shapes and state, cached decoding, scan vs unrolled, the train
step (loss falls, the hash tables stay frozen), parameter counts, and the DeepSeek-V3 tree
left as it was.

One tiny config as V4 stacks its layers: a hash-routed layer, then two learned MoE layers.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_rl.checkpoint import Checkpointer
from moe_rl.models import counting, transformer
from moe_rl.models.moe import BIAS_COLLECTION, HASH_COLLECTION
from moe_rl.train import configs, lm, train_state
from tests.utils import jitted_forward, make_config, random_batch

V4_DECODER = dict(
    num_hidden_layers=3,
    first_k_dense_replace=0,  # as V4: no dense layers, hash layers first
    mlp_layer_types=("hash_moe", "moe", "moe"),
    hc_mult=2,
    hc_sinkhorn_iters=5,
    scoring_func="sqrtsoftplus",
    n_group=1,
    topk_group=1,
    swiglu_limit=10.0,
    num_nextn_predict_layers=0,
)


def v4_config(**overrides):
    return make_config("tiny", **{**V4_DECODER, **overrides})


@pytest.fixture(scope="module")
def model():
    cfg = v4_config()
    params, state = jax.jit(lambda key: transformer.init(cfg, key))(jax.random.key(0))
    return cfg, params, state


def _abstract_init(cfg):
    return jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))


def _flat(tree):
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def test_forward_shapes_params_and_state(model):
    cfg, params, state = model
    assert transformer.layer_stacks(cfg) == (("hash", 1), ("moe", 2))
    assert set(params) == {
        "embed",
        "hash_layers",
        "moe_layers",
        "hc_head",
        "final_norm",
        "lm_head",
    }
    for stack in ("hash_layers", "moe_layers"):
        for layer in params[stack].values():
            assert {"attn_hc", "ffn_hc"} <= set(layer)
            N, D = cfg.hc_mult, cfg.hidden_size
            chex.assert_shape(layer["attn_hc"]["fn"], (N * D, (2 + N) * N))
    # The routing bias only on learned layers; the frozen tables only on hash layers.
    assert set(state) == {BIAS_COLLECTION, HASH_COLLECTION}
    assert set(state[BIAS_COLLECTION]) == {"moe_layers"}
    tid2eid = state[HASH_COLLECTION]["hash_layers"]["0"]["mlp"]["tid2eid"]
    chex.assert_shape(tid2eid, (cfg.vocab_size, cfg.num_experts_per_tok))
    assert tid2eid.dtype == jnp.int32

    tokens, positions = random_batch(cfg, batch=2, length=10)
    logits, _, aux = jitted_forward(cfg)(params, state, tokens, positions)
    chex.assert_shape(logits, (2, 10, cfg.vocab_size))
    assert np.all(np.isfinite(np.asarray(logits)))
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    chex.assert_shape(aux["expert_counts"], (2, E))  # learned layers only
    chex.assert_shape(aux["expert_ids"], (2, 2, 10, K))
    chex.assert_shape(aux["hash_expert_counts"], (1, E))
    # A hash layer's experts are its table's rows for the tokens.
    np.testing.assert_array_equal(aux["hash_expert_ids"][0], np.asarray(tid2eid)[tokens])
    # Routing replay covers the learned layers only: replaying their own choice changes nothing.
    replayed = jax.jit(lambda p, s, r: transformer.forward(cfg, p, s, tokens, positions, replay=r))(
        params, state, aux["expert_ids"]
    )
    chex.assert_trees_all_close(replayed[0], logits, atol=1e-5)
    np.testing.assert_array_equal(replayed[2]["replay_differs"], np.zeros(2))
    assert "hash_replay_differs" not in replayed[2]


def test_cached_decoding_equals_full_forward(model):
    cfg, params, state = model
    tokens, positions = random_batch(cfg, batch=2, length=10, seed=2)  # as above: one compile
    full = jitted_forward(cfg)(params, state, tokens, positions)[0]
    cache = transformer.init_cache(cfg, 2, 12)
    assert set(cache) == {"index", "segment_ids", "hash", "moe"}
    out, cache, _ = jitted_forward(cfg)(params, state, tokens[:, :6], positions[:, :6], cache=cache)
    outs = [out]
    for i in range(6, 10):
        out, cache, _ = jitted_forward(cfg)(
            params, state, tokens[:, i : i + 1], positions[:, i : i + 1], cache=cache
        )
        outs.append(out)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)
    # Repeated rows decode like their source row.
    repeated = transformer.repeat_cache(cfg, cache, 2)
    chex.assert_shape(repeated["hash"][0]["latent"], (4, 12, cfg.kv_lora_rank))


def _stack(tree: dict) -> dict:
    """Unrolled {'0': .., '1': ..} layer stacks -> the scanned layout (stacked on axis 0)."""
    stacked = lambda layers: jax.tree.map(
        lambda *xs: jnp.stack(xs), *[layers[str(i)] for i in range(len(layers))]
    )
    return {
        k: {"scan": {"layer": stacked(v)}} if k.endswith("_layers") else v for k, v in tree.items()
    }


def test_scan_equals_unrolled(model):
    cfg, params, state = model
    scanned = v4_config(scan_layers=True, remat=True)
    s_params = _stack(params)
    s_state = {name: _stack(col) for name, col in state.items()}
    want_params, want_state = _abstract_init(scanned)
    chex.assert_trees_all_equal_shapes_and_dtypes(s_params, want_params)
    chex.assert_trees_all_equal_shapes_and_dtypes(s_state, want_state)
    tokens, positions = random_batch(cfg, batch=2, length=10, seed=3)
    unrolled = jitted_forward(cfg)(params, state, tokens, positions)
    stacked = jitted_forward(scanned)(s_params, s_state, tokens, positions)
    chex.assert_trees_all_close(stacked[0], unrolled[0], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(stacked[2], unrolled[2], atol=1e-5, rtol=1e-5)


def test_train_steps_lower_the_loss_and_keep_the_hash_tables(model, tmp_path):
    cfg, params, model_state = model
    tx = train_state.make_optimizer(configs.optim(warmup_steps=0, eps=1e-6), num_steps=30)
    state = train_state.create(params, model_state, tx, jax.random.key(1))
    opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert not [p for p in opt_paths if "opt_state" in p and "tid2eid" in p]  # not optimised
    step = jax.jit(lm.make_train_step(cfg, lm.LossConfig(), tx, bias_rate=1e-2))
    pattern = np.arange(8) * 7 + 40
    tokens = jnp.asarray(np.stack([np.roll(np.resize(pattern, 16), -r) for r in range(4)]))
    batch = {
        "tokens": tokens,
        "positions": jnp.broadcast_to(jnp.arange(16), tokens.shape),
        "segment_ids": jnp.ones_like(tokens),
    }
    batch = {k: v[None] for k, v in batch.items()}  # one microbatch
    new, losses = state, []
    for _ in range(8):
        new, metrics = step(new, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    chex.assert_shape(metrics["routing_bias"], (2, cfg.n_routed_experts))
    chex.assert_trees_all_equal(
        new.model_state[HASH_COLLECTION], state.model_state[HASH_COLLECTION]
    )
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)),
        new.model_state[BIAS_COLLECTION],
        state.model_state[BIAS_COLLECTION],
    )
    assert all(jax.tree.leaves(moved))  # the learned layers' biases did balance
    # The hash tables are checkpointed with the rest of the state.
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(8, new)
    restored, _, _ = Checkpointer(str(tmp_path)).restore_latest(jax.eval_shape(lambda: state))
    chex.assert_trees_all_equal(restored.model_state, new.model_state)


def test_param_counts_match_tree(model):
    cfg, params, _ = model
    leaves = jax.tree.leaves(params)
    assert counting.param_counts(cfg)["total"] == sum(int(np.prod(x.shape)) for x in leaves)
    v3 = v4_config(hc_mult=0)
    v3_params = _abstract_init(v3)[0]
    v3_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v3_params))
    assert counting.param_counts(v3)["total"] == v3_total


def test_v3_tree_is_unchanged():
    """hc_mult=0 and no hash layers: the DeepSeek-V3 tree, no mHC or hash entries, one state
    collection; the hash layer of the V4 config is a learned layer there, same parameters."""
    v3 = make_config("tiny", num_nextn_predict_layers=0)
    params, state = _abstract_init(v3)
    assert set(params) == {"embed", "dense_layers", "moe_layers", "final_norm", "lm_head"}
    assert set(state) == {BIAS_COLLECTION}
    assert not [k for k in _flat(params) if "hc" in k or "hash" in k]
    assert set(transformer.init_cache(v3, 1, 4)) == {"index", "segment_ids", "dense", "moe"}

    v4 = v4_config()
    v4_params = _abstract_init(v4)[0]
    no_mhc = v4_config(hc_mult=0, mlp_layer_types=())
    base = _abstract_init(no_mhc)[0]
    # Rename V4's stacks to the V3 layout (the hash layer is moe layer 0) and drop mHC.
    renamed = {}
    for key, leaf in _flat(v4_params).items():
        if "_hc/" in key or key.startswith("hc_head/"):
            continue
        if key.startswith("moe_layers/"):
            _, i, rest = key.split("/", 2)
            key = f"moe_layers/{int(i) + 1}/{rest}"
        key = key.replace("hash_layers/", "moe_layers/")
        renamed[key] = (leaf.shape, leaf.dtype)
    assert renamed == {k: (v.shape, v.dtype) for k, v in _flat(base).items()}


def test_layer_order_and_mtp_errors():
    bad = v4_config(mlp_layer_types=("moe", "hash_moe", "moe"))
    with pytest.raises(ValueError, match="'hash_moe' ones, then the 'moe' ones"):
        _abstract_init(bad)
    with pytest.raises(ValueError, match="model.num_nextn_predict_layers=1"):
        v4_config(num_nextn_predict_layers=1)
    # Hash layers without mHC are a plain residual stream; a dense layer goes first.
    dense = dict(first_k_dense_replace=1, mlp_layer_types=("moe", "hash_moe", "moe"))
    params, state = _abstract_init(v4_config(hc_mult=0, **dense))
    assert "hc_head" not in params and HASH_COLLECTION in state
    assert transformer.layer_stacks(v4_config(**dense)) == (("dense", 1), ("hash", 1), ("moe", 1))
    dense_first = v4_config(num_hidden_layers=4, first_k_dense_replace=1, mlp_layer_types=())
    assert transformer.layer_stacks(dense_first) == (("dense", 1), ("hash", 2), ("moe", 1))
