"""Training DeepSeek Sparse Attention's indexer (DeepSeek-V3.2, arXiv 2512.02556 sec. 2.1.1):
the KL target and the indexer's distribution against a loop reference, the dense warm-up (only
the indexer moves, its KL falls), the sparse stage's separated gradients, the config checks."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from moe_rl.models import transformer
from moe_rl.models.attention import MLA
from moe_rl.models.config import preset
from moe_rl.recipes import pretrain
from moe_rl.train import configs, lm, train_state
from tests.test_sparse_attention import SPARSE, _rms, _rope, _without_indexer
from tests.utils import jitted_forward, make_config, random_batch, tiny_pretrain_config


def reference_target(cfg, p, x_BLD, seg_BL, stage):
    """(target p [B, L, L], indexer log-probs [B, L, L], KL [B, L]) of DSA's indexer loss,
    token by token in float64: query t's visible keys are s <= t of its segment; the sparse
    stage keeps the index_topk of highest index score; p = sum over heads of the attention over
    the kept keys, normalised; the indexer's distribution is the softmax of its scores there."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    B, L, _ = x_BLD.shape
    H, dn, dr, c = (
        cfg.num_attention_heads,
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.kv_lora_rank,
    )
    J, di, eps, theta = cfg.index_n_heads, cfg.index_head_dim, cfg.rms_norm_eps, cfg.rope_theta
    ix = p["indexer"]
    target, logq, kl = np.zeros((B, L, L)), np.zeros((B, L, L)), np.zeros((B, L))
    for b in range(B):
        x = x_BLD[b].astype(np.float64)
        pos = np.zeros(L, int)  # positions restart in each document
        for t in range(1, L):
            pos[t] = pos[t - 1] + 1 if seg_BL[b, t] == seg_BL[b, t - 1] else 0
        q_lat = [_rms(x[t] @ p["q_a_proj"], p["q_a_norm"]["scale"], eps) for t in range(L)]
        kv = [x[t] @ p["kv_a_proj"] for t in range(L)]
        latent = [_rms(kv[t][:c], p["kv_a_norm"]["scale"], eps) for t in range(L)]
        k_rope = [_rope(kv[t][c:], pos[t], dr, theta, True) for t in range(L)]
        index_k = []
        for t in range(L):
            k = x[t] @ ix["wk"]
            k = (k - k.mean()) / np.sqrt(k.var() + 1e-6) * ix["k_norm_scale"] + ix["k_norm_bias"]
            index_k.append(np.concatenate([_rope(k[:dr], pos[t], dr, theta, False), k[dr:]]))
        for t in range(L):
            visible = [s for s in range(t + 1) if seg_BL[b, s] == seg_BL[b, t]]
            w = x[t] @ ix["weights_proj"] / math.sqrt(J)
            score = {}
            for s in visible:
                total = 0.0
                for j in range(J):
                    q = q_lat[t] @ ix["wq_b"][:, j]
                    q = np.concatenate([_rope(q[:dr], pos[t], dr, theta, False), q[dr:]])
                    total += w[j] * max(0.0, q @ index_k[s] / math.sqrt(di))
                score[s] = total
            kept = visible
            if stage == "sparse":
                kept = sorted(visible, key=lambda s: -score[s])[: cfg.index_topk]
            for h in range(H):
                q = q_lat[t] @ p["q_b_proj"][:, h]
                q_nope, q_rope = q[:dn], _rope(q[dn:], pos[t], dr, theta, True)
                logits = np.array(
                    [
                        (q_nope @ (latent[s] @ p["kv_b_proj"][:, h, :dn]) + q_rope @ k_rope[s])
                        / math.sqrt(dn + dr)
                        for s in kept
                    ]
                )
                probs = np.exp(logits - logits.max())
                target[b, t, kept] += probs / probs.sum()
            target[b, t] /= target[b, t].sum()
            scores = np.array([score[s] for s in kept])
            logq[b, t, kept] = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
            pt = target[b, t, kept]
            kl[b, t] = np.sum(pt * (np.log(pt) - logq[b, t, kept]))
    return target, logq, kl


@pytest.mark.parametrize("stage", ["warmup", "sparse"])
def test_kl_target_and_indexer_distribution_match_the_loop_reference(stage):
    cfg = make_config("tiny", **SPARSE)
    B, L = 2, 9
    x = jax.random.normal(jax.random.key(0), (B, L, cfg.hidden_size))
    seg = np.array([[1] * 9, [1] * 4 + [2] * 5])  # row 1: two documents
    pos = np.array([list(range(9)), list(range(4)) + list(range(5))])
    same = seg[:, :, None] == seg[:, None, :]
    mask = jnp.asarray(np.tril(np.ones((L, L), bool))[None] & same)
    module = MLA(cfg, dsa=stage)
    params = nn.meta.unbox(module.init(jax.random.key(1), x, jnp.asarray(pos), mask))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(  # large weights: attention and index scores far from uniform
        tree,
        [
            1 + 0.1 * jax.random.normal(k, a.shape)
            if a.ndim == 1
            else 0.3 * jax.random.normal(k, a.shape)
            for k, a in zip(keys, leaves, strict=True)
        ],
    )
    (out, cache, aux), inter = module.apply(
        {"params": params}, x, jnp.asarray(pos), mask, mutable=["intermediates"]
    )
    assert cache is None
    target, logq, kl = reference_target(cfg, params, np.asarray(x), seg, stage)
    sown = inter["intermediates"]
    np.testing.assert_allclose(np.asarray(sown["dsa_target"][0]), target, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sown["dsa_index_logp"][0]), logq, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["dsa_kl"]), kl, atol=1e-4, rtol=1e-4)
    assert kl.max() > 0.1  # far from a trivial 0
    # The attention output is the inference path's (dense MLA in warm-up, top-k when sparse).
    if stage == "sparse":
        plain = MLA(cfg).apply({"params": params}, x, jnp.asarray(pos), mask)[0]
    else:
        plain = MLA(make_config("tiny")).apply(
            {"params": _without_indexer(params)}, x, jnp.asarray(pos), mask
        )[0]
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), atol=1e-6)


def _sharpened(cfg, seed=0):
    """tiny_v32's params with the attention's query/key weights x4: a peaked attention (the init
    attends almost uniformly, a target the untrained indexer already matches)."""
    params, state = transformer.init(cfg, jax.random.key(seed))
    sharpen = lambda path, a: (
        4 * a if any(getattr(k, "key", "") in ("q_b_proj", "kv_b_proj") for k in path) else a
    )
    return jax.tree_util.tree_map_with_path(sharpen, params), state


def _batch(cfg, batch=4, length=32):
    tokens, positions = random_batch(cfg, batch=batch, length=length)
    seg = jnp.ones_like(tokens).at[:, -3:].set(0)  # padding at the end of every row
    return dict(tokens=tokens, positions=positions, segment_ids=seg)


def _is_indexer_leaf(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: train_state.is_indexer(p), params)


def test_warmup_step_updates_only_the_indexer_and_its_kl_falls():
    cfg = make_config("tiny_v32")
    params, state = _sharpened(cfg)
    tx = train_state.make_optimizer(configs.optim(learning_rate=1e-2, warmup_steps=0), 100)
    tx = train_state.freeze_all_but(tx, train_state.is_indexer)
    st = train_state.create(params, state, tx, jax.random.key(0))
    lc = lm.LossConfig(dsa_stage="warmup")
    step = jax.jit(lm.make_train_step(cfg, lc, tx, bias_rate=1e-3))
    batch = jax.tree.map(lambda a: a[None], _batch(cfg))
    new, metrics = step(st, batch)
    indexer = _is_indexer_leaf(params)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), st.params, new.params)
    flags = list(zip(jax.tree.leaves(indexer), jax.tree.leaves(moved), strict=True))
    assert all(m == i for i, m in flags)  # indexer leaves moved, nothing else did
    assert sum(i for i, _ in flags) == 5 * (
        cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    )  # every indexer tensor
    assert jax.tree.all(jax.tree.map(jnp.array_equal, st.model_state, new.model_state))
    assert float(metrics["loss"]) == float(metrics["dsa_kl"]) > 0
    kls = [float(metrics["dsa_kl"])]
    for _ in range(6):
        new, metrics = step(new, batch)
        kls.append(float(metrics["dsa_kl"]))
    assert kls[-1] < 0.8 * kls[0], kls
    assert all(b < a for a, b in zip(kls, kls[1:], strict=False)), kls


def test_sparse_stage_gradients_are_separated_by_the_stop_gradient():
    """The LM loss does not reach the indexer; the KL reaches the indexer only."""
    cfg = make_config("tiny_v32", index_topk=4)
    params, state = _sharpened(cfg)
    batch = _batch(cfg, batch=2, length=12)
    lc = lm.LossConfig(dsa_stage="sparse", dsa_kl_weight=0.5)

    def parts(p):
        loss, (metrics, _) = lm.lm_loss(p, state, batch, cfg, lc)
        return loss - lc.dsa_kl_weight * metrics["dsa_kl"], metrics["dsa_kl"]

    g_lm = jax.jit(jax.grad(lambda p: parts(p)[0]))(params)
    g_kl = jax.jit(jax.grad(lambda p: parts(p)[1]))(params)
    indexer = _is_indexer_leaf(params)
    for is_ix, a, b in zip(*map(jax.tree.leaves, (indexer, g_lm, g_kl)), strict=True):
        lm_norm, kl_norm = float(jnp.abs(a).max()), float(jnp.abs(b).max())
        assert (lm_norm == 0) if is_ix else (kl_norm == 0)
    leaves = zip(jax.tree.leaves(g_kl), jax.tree.leaves(indexer), strict=True)
    ix_kl = [float(jnp.abs(g).max()) for g, is_ix in leaves if is_ix]
    num_attention_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    assert len(ix_kl) == 5 * num_attention_layers and min(ix_kl) > 0  # every indexer tensor
    assert float(jnp.abs(g_lm["moe_layers"]["0"]["attn"]["q_b_proj"]).max()) > 0
    # The sparse stage's logits are the inference path's (top-k attention).
    logits = transformer.forward(
        cfg, params, state, batch["tokens"], batch["positions"], batch["segment_ids"], dsa="sparse"
    )[0]
    plain = jitted_forward(cfg)(
        params, state, batch["tokens"], batch["positions"], batch["segment_ids"]
    )[0]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain), atol=1e-6)


def _train_config(model, **train):
    return ConfigDict(dict(model=model, train=configs.train(**train), optim=configs.optim()))


@pytest.mark.parametrize(
    "model, train, named",
    [
        ("tiny", dict(dsa_stage="warmup"), ["train.dsa_stage='warmup'", "model.index_topk"]),
        ("tiny_v32", dict(dsa_stage="dense"), ["train.dsa_stage='dense'", "'warmup', 'sparse'"]),
        ("tiny_v32", dict(dsa_stage="sparse", dsa_kl_weight=-1.0), ["train.dsa_kl_weight"]),
    ],
)
def test_dsa_stage_config_errors_name_the_key(model, train, named):
    config = _train_config(preset(model), **train)
    with pytest.raises(ValueError) as err:
        lm.validate_train_config(config, make_config(model))
    for name in named:
        assert name in str(err.value)


def test_pretrain_rejects_a_warmup_without_indexer_before_compiling(tmp_path, monkeypatch):
    config = tiny_pretrain_config(1)
    config.model = preset("tiny")
    config.train.dsa_stage = "warmup"
    monkeypatch.setattr(lm, "load_sources", lambda _: pytest.fail("data loaded"))
    monkeypatch.setattr(pretrain, "load_sources", lambda _: pytest.fail("data loaded"))
    with pytest.raises(ValueError, match="model.index_topk"):
        pretrain.run(config, str(tmp_path))


@pytest.mark.parametrize("stage", ["warmup", "sparse"])
def test_kl_is_the_same_whatever_the_causal_blocks(stage):
    """Query t's KL reads keys <= t only: at L=140 (query blocks [0, 64), [64, 128), [128, 140))
    it equals the last query's KL of the first t + 1 tokens alone (other blocks, or one)."""
    cfg = make_config("tiny", **SPARSE)
    L = 140
    x = jax.random.normal(jax.random.key(0), (1, L, cfg.hidden_size))
    pos = jnp.arange(L)[None]
    causal = lambda n: jnp.tril(jnp.ones((n, n), bool))[None]
    module = MLA(cfg, dsa=stage)
    params = module.init(jax.random.key(1), x, pos, causal(L))["params"]
    params = jax.tree.map(lambda a: 3 * a if a.ndim > 1 else a, nn.meta.unbox(params))
    apply = jax.jit(lambda x, pos, mask: module.apply({"params": params}, x, pos, mask)[2])
    full = apply(x, pos, causal(L))["dsa_kl"][0]
    for t in (40, 63, 64, 100, 127, 128, 139):
        alone = apply(x[:, : t + 1], pos[:, : t + 1], causal(t + 1))["dsa_kl"][0, -1]
        np.testing.assert_allclose(float(full[t]), float(alone), rtol=1e-4, atol=1e-6)
    assert float(full.max()) > 0.01
