"""DeepSeek-V4 attention (models/compressed_attention.py): each layer type against a float64
reference written token by token, cached decode against the full forward, packed documents,
gradients and bfloat16, parity with transformers' DeepseekV4Attention (full forward and decode
through its cache; PyTorch, CPU, float32, skipped without torch/transformers), and the config
checks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.models import compressed_attention as ca
from moe_rl.models.compressed_attention import V4Attention, init_v4_layer_cache
from moe_rl.models.config import V4_LAYER_TYPES
from tests.utils import make_config

CSA, HCA, SWA = "compressed_sparse_attention", "heavily_compressed_attention", "sliding_attention"
# Tiny V4 attention: window 6, an entry per 4 (CSA) or 8 (HCA) tokens, 16 indexer heads (a tie
# at index score 0 needs all 16 ReLUs at 0: rare).
V4 = dict(
    attention="v4",
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=16,
    q_lora_rank=16,
    partial_rotary_factor=0.5,
    sliding_window=6,
    layer_types=[SWA, CSA, HCA],
    compress_rates=dict(compressed_sparse_attention=4, heavily_compressed_attention=8),
    rope_theta=100.0,
    compress_rope_theta=1000.0,
    index_topk=2,
    index_n_heads=16,
    index_head_dim=12,
    o_groups=2,
    o_lora_rank=8,
    num_nextn_predict_layers=0,  # V4's MTP block is not built
)


def v4_config(**overrides):
    return make_config("tiny", **{**V4, **overrides})


def causal_mask(B, L):
    return jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))


def random_params(module, x, positions, mask, seed=1):
    """The module's params (their shapes from `init`), drawn larger than the init's: 1-D ones
    around 1, sinks and position biases around 0, so attention and pooling are far from
    uniform."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, positions, mask)["params"]
    flat, tree = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes))
    rng = np.random.default_rng(seed)
    leaves = []
    for path, a in flat:
        noise = rng.standard_normal(a.shape)
        if path[-1].key in ("sinks", "position_bias"):
            value = noise
        elif len(a.shape) == 1:
            value = 1 + 0.1 * noise
        else:
            value = 0.3 * noise
        leaves.append(jnp.asarray(value, a.dtype))
    return jax.tree.unflatten(tree, leaves)


# ---- float64 reference ------------------------------------------------------------------


def _rms(v, scale, eps):
    return v / np.sqrt(np.mean(v * v) + eps) * scale


def _rope_tail(v, pos, rd, theta):
    """Rotates the last rd features of vector v by interleaved pairs, one pair at a time."""
    out = np.array(v, dtype=np.float64)
    base = len(v) - rd
    for i in range(rd // 2):
        angle = pos / theta ** (2 * i / rd)
        a, b = base + 2 * i, base + 2 * i + 1
        out[a] = v[a] * math.cos(angle) - v[b] * math.sin(angle)
        out[b] = v[b] * math.cos(angle) + v[a] * math.sin(angle)
    return out


def _entries(x, p, m, dim, overlap, rd, theta, eps):
    """Compressed entries of a sequence x [L, D], one block of m tokens at a time."""
    kv, gate = x @ p["kv_proj"], x @ p["gate_proj"]
    out = []
    for w in range(len(x) // m):
        slots = []  # (C, logit) of every pooled token, per feature
        if overlap and w > 0:
            for j in range((w - 1) * m, w * m):
                slots.append((kv[j, :dim], gate[j, :dim] + p["position_bias"][j % m, :dim]))
        for j in range(w * m, (w + 1) * m):
            c, z = kv[j, -dim:], gate[j, -dim:] + p["position_bias"][j % m, -dim:]
            slots.append((c, z))
        pooled = np.zeros(dim)
        for f in range(dim):
            z = np.array([s[1][f] for s in slots])
            e = np.exp(z - z.max())
            pooled[f] = sum(e[i] / e.sum() * slots[i][0][f] for i in range(len(slots)))
        out.append(_rope_tail(_rms(pooled, p["kv_norm"]["scale"], eps), w * m, rd, theta))
    return out


def reference_v4(cfg, layer_type, p, x_BLD):
    """V4 attention of one layer written out query by query (float64): window keys, the
    entries whose block ended, CSA's top-k of them by the indexer, the sink, the output's
    rotation undone, the grouped output projection."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    B, L, D = x_BLD.shape
    H, d, W, eps, rd = (
        cfg.num_attention_heads,
        cfg.head_dim,
        cfg.sliding_window,
        cfg.rms_norm_eps,
        cfg.v4_rope_dim,
    )
    compressed = layer_type != SWA
    theta = cfg.compress_rope_theta if compressed else cfg.rope_theta
    m = getattr(cfg.compress_rates, layer_type) if compressed else None
    G = cfg.o_groups
    out = np.zeros((B, L, D))
    for b in range(B):
        x = x_BLD[b].astype(np.float64)
        q_lat = [_rms(x[t] @ p["q_a_proj"], p["q_a_norm"]["scale"], eps) for t in range(L)]
        kv = [
            _rope_tail(_rms(x[t] @ p["kv_proj"], p["kv_norm"]["scale"], eps), t, rd, theta)
            for t in range(L)
        ]
        entries = []
        if compressed:
            entries = _entries(x, p["compressor"], m, d, layer_type == CSA, rd, theta, eps)
        if layer_type == CSA:
            ix = p["indexer"]
            ikeys = _entries(x, ix, m, cfg.index_head_dim, True, rd, theta, eps)
        for t in range(L):
            keys = [kv[s] for s in range(max(0, t - W + 1), t + 1)]
            visible = [w for w in range(len(entries)) if (w + 1) * m <= t + 1]
            if layer_type == CSA:
                wts = x[t] @ ix["weights_proj"] / math.sqrt(cfg.index_n_heads)
                score = {}
                for w in visible:
                    total = 0.0
                    for j in range(cfg.index_n_heads):
                        q = _rope_tail(q_lat[t] @ ix["q_b_proj"][:, j], t, rd, theta)
                        total += wts[j] * max(0.0, q @ ikeys[w] / math.sqrt(cfg.index_head_dim))
                    score[w] = total
                visible = sorted(visible, key=lambda w: -score[w])[: cfg.index_topk]
            keys += [entries[w] for w in visible]
            heads = []
            for h in range(H):
                q = q_lat[t] @ p["q_b_proj"][:, h]
                q = _rope_tail(q / np.sqrt(np.mean(q * q) + eps), t, rd, theta)
                logits = [q @ k / math.sqrt(d) for k in keys] + [p["sinks"][h]]
                e = np.exp(np.array(logits) - max(logits))
                probs = e / e.sum()
                o = sum(pr * k for pr, k in zip(probs[:-1], keys, strict=True))
                heads.append(_rope_tail(o, -t, rd, theta))
            per_group = H // G
            for g in range(G):
                o_g = np.concatenate(heads[g * per_group : (g + 1) * per_group])
                out[b, t] += o_g @ p["o_a_proj"][g] @ p["o_b_proj"][g]
    return out


@functools.cache
def _apply(cfg, layer_type):
    """V4Attention.apply of one layer type, compiled once per config (shared by the tests)."""
    return jax.jit(V4Attention(cfg, layer_type).apply)


def _setup(layer_type, B=2, L=19, **overrides):
    cfg = v4_config(**overrides)
    x = jax.random.normal(jax.random.key(3), (B, L, cfg.hidden_size))
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = causal_mask(B, L)
    module = V4Attention(cfg, layer_type)
    params = random_params(module, x, positions, mask)
    return cfg, module, params, x, positions, mask


@pytest.mark.parametrize("layer_type", V4_LAYER_TYPES)
def test_each_layer_type_matches_the_loop_reference(layer_type, monkeypatch):
    cfg, module, params, x, positions, mask = _setup(layer_type)
    expected = reference_v4(cfg, layer_type, params, np.asarray(x))
    fast, cache = _apply(cfg, layer_type)({"params": params}, x, positions, mask)
    assert cache is None
    np.testing.assert_allclose(np.asarray(fast), expected, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(ca, "QUERY_BLOCK", 4)  # four query blocks: their banded key ranges
    blocks = jax.jit(module.apply)({"params": params}, x, positions, mask)[0]
    np.testing.assert_allclose(np.asarray(blocks), expected, atol=1e-4, rtol=1e-4)


def test_the_selection_and_the_entries_change_the_output():
    """Guards the reference test: CSA's top-2 differs from attending to every entry, and the
    compressed layers differ from the window alone."""
    cfg, module, params, x, positions, mask = _setup(CSA)
    sparse = _apply(cfg, CSA)({"params": params}, x, positions, mask)[0]
    dense = jax.jit(V4Attention(v4_config(index_topk=64), CSA).apply)(
        {"params": params}, x, positions, mask
    )[0]
    assert float(jnp.abs(sparse - dense)[:, 12:].max()) > 1e-3  # queries with > 2 entries
    for kind in (CSA, HCA):
        cfg, module, params, x, positions, mask = _setup(kind)
        full = _apply(cfg, kind)({"params": params}, x, positions, mask)[0]
        window = {k: v for k, v in params.items() if k not in ("compressor", "indexer")}
        local = _apply(cfg, SWA)({"params": window}, x, positions, mask)[0]
        m = getattr(cfg.compress_rates, kind)
        # Before the first block closes nothing differs but the rotary base.
        assert float(jnp.abs(full - local)[:, m - 1 :].max()) > 1e-3


def _decode(cfg, layer_type, params, x, positions, steps, max_len=24):
    """Runs the cache: one call per chunk of `steps` (sizes), returns the outputs [B, L, D]."""
    B = x.shape[0]
    cache = init_v4_layer_cache(cfg, layer_type, B, max_len)
    outs, c = [], 0
    for n in steps:
        slots = c + jnp.arange(n)
        mask = jnp.broadcast_to(jnp.arange(max_len)[None, :] <= slots[:, None], (B, n, max_len))
        out, cache = _apply(cfg, layer_type)(
            {"params": params}, x[:, c : c + n], positions[:, c : c + n], mask, cache, jnp.int32(c)
        )
        outs.append(out)
        c += n
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("layer_type", V4_LAYER_TYPES)
def test_cached_decode_equals_the_full_forward(layer_type):
    """A 7-token prompt then one token at a time, and one at a time from the first token then
    a chunk of 7 (closing blocks inside it): crossing CSA's (4) and HCA's (8) block boundaries
    and the window (6) several times."""
    cfg, module, params, x, positions, mask = _setup(layer_type)
    full = _apply(cfg, layer_type)({"params": params}, x, positions, mask)[0]
    for steps in ([7] + [1] * 12, [1] * 9 + [7] + [1] * 3):
        decoded, cache = _decode(cfg, layer_type, params, x, positions, steps)
        np.testing.assert_allclose(np.asarray(decoded), np.asarray(full), atol=2e-5, rtol=1e-5)
    assert cache["kv"].shape == (2, cfg.sliding_window, cfg.head_dim)
    if layer_type != SWA:
        m = getattr(cfg.compress_rates, layer_type)
        assert cache["entries"].shape == (2, 24 // m, cfg.head_dim)
        assert float(jnp.abs(cache["entries"][:, 19 // m :]).max()) == 0  # none emitted early


def test_packed_documents_see_only_their_own_tokens():
    """A document packed after another that ends on a block boundary (8 tokens) gives what it
    gives alone, in every layer type; changing the first document changes nothing after it."""
    for kind in V4_LAYER_TYPES:
        cfg, module, params, x, _, _ = _setup(kind)
        seg = jnp.array([1] * 8 + [2] * 11)
        positions = jnp.broadcast_to(jnp.concatenate([jnp.arange(8), jnp.arange(11)]), (2, 19))
        mask = (seg[:, None] == seg[None, :]) & jnp.tril(jnp.ones((19, 19), bool))
        mask = jnp.broadcast_to(mask, (2, 19, 19))
        apply = _apply(cfg, kind)
        packed = apply({"params": params}, x, positions, mask)[0]
        alone = apply({"params": params}, x[:, 8:], positions[:, 8:], causal_mask(2, 11))[0]
        np.testing.assert_allclose(np.asarray(packed[:, 8:]), np.asarray(alone), atol=2e-5)
        other = x.at[:, :8].set(jax.random.normal(jax.random.key(9), x[:, :8].shape))
        moved = apply({"params": params}, other, positions, mask)[0]
        np.testing.assert_allclose(np.asarray(moved[:, 8:]), np.asarray(packed[:, 8:]), atol=2e-5)


def _hf_attention(cfg, layer_idx, seed=0):
    """transformers' DeepseekV4Attention of layer `layer_idx` on the same tiny config, with
    random weights (sinks and position biases included), and its rotary embedding."""
    torch = pytest.importorskip("torch")
    v4 = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
    from transformers import DeepseekV4Config

    hf_cfg = DeepseekV4Config(
        vocab_size=64,
        max_position_embeddings=16,  # YaRN's factor 4 over original_max_position_embeddings 4
        hidden_size=cfg.hidden_size,
        moe_intermediate_size=16,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=1,
        head_dim=cfg.head_dim,
        q_lora_rank=cfg.q_lora_rank,
        partial_rotary_factor=cfg.partial_rotary_factor,
        sliding_window=cfg.sliding_window,
        layer_types=list(cfg.layer_types),
        compress_rates=dict(
            compressed_sparse_attention=cfg.compress_rates.compressed_sparse_attention,
            heavily_compressed_attention=cfg.compress_rates.heavily_compressed_attention,
        ),
        rope_theta=cfg.rope_theta,
        compress_rope_theta=cfg.compress_rope_theta,
        index_topk=cfg.index_topk,
        index_n_heads=cfg.index_n_heads,
        index_head_dim=cfg.index_head_dim,
        o_groups=cfg.o_groups,
        o_lora_rank=cfg.o_lora_rank,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=None if cfg.rope_scaling is None else YARN_HF,
        n_routed_experts=4,
        num_experts_per_tok=2,
    )
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    attn = v4.DeepseekV4Attention(hf_cfg, layer_idx).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("sinks") or name.endswith("position_bias"):
                p.copy_(noise)
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.3 * noise)
    return attn, v4.DeepseekV4RotaryEmbedding(hf_cfg)


def _params_from_hf(attn, cfg):
    """Our V4Attention params from the torch module's state dict (float32)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in attn.state_dict().items()}
    H, d, r, G = cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank, cfg.o_groups
    ro, D = cfg.o_lora_rank, cfg.hidden_size
    params = {
        "q_a_proj": sd["q_a_proj.weight"].T,
        "q_a_norm": {"scale": sd["q_a_norm.weight"]},
        "q_b_proj": sd["q_b_proj.weight"].T.reshape(r, H, d),
        "kv_proj": sd["kv_proj.weight"].T,
        "kv_norm": {"scale": sd["kv_norm.weight"]},
        "sinks": sd["sinks"],
        "o_a_proj": sd["o_a_proj.weight"].reshape(G, ro, -1).transpose(0, 2, 1),
        "o_b_proj": sd["o_b_proj.weight"].T.reshape(G, ro, D),
    }

    def compressor(prefix):
        return {
            "kv_proj": sd[f"{prefix}kv_proj.weight"].T,
            "gate_proj": sd[f"{prefix}gate_proj.weight"].T,
            "position_bias": sd[f"{prefix}position_bias"],
            "kv_norm": {"scale": sd[f"{prefix}kv_norm.weight"]},
        }

    if "compressor.kv_proj.weight" in sd:
        params["compressor"] = compressor("compressor.")
    if "compressor.indexer.kv_proj.weight" in sd:
        J, di = cfg.index_n_heads, cfg.index_head_dim
        params["indexer"] = {
            **compressor("compressor.indexer."),
            "q_b_proj": sd["compressor.indexer.q_b_proj.weight"].T.reshape(r, J, di),
            "weights_proj": sd["compressor.indexer.scorer.weights_proj.weight"].T,
        }
    return params


YARN = dict(type="yarn", factor=4.0, original_max_position_embeddings=4)
YARN_HF = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4)


# Sliding, CSA, HCA; then with YaRN, which V4 applies to the compressed layers' rotary only.
@pytest.mark.parametrize(
    "layer_idx, yarn", [(0, False), (1, False), (2, False), (0, True), (1, True)]
)
def test_matches_transformers_deepseek_v4_attention(layer_idx, yarn):
    torch = pytest.importorskip("torch")
    cfg = v4_config(rope_scaling=YARN) if yarn else v4_config()
    layer_type = cfg.layer_types[layer_idx]
    attn, rotary = _hf_attention(cfg, layer_idx)
    B, L, W = 2, 19, cfg.sliding_window
    x = np.asarray(jax.random.normal(jax.random.key(3), (B, L, cfg.hidden_size)))
    pos = np.broadcast_to(np.arange(L), (B, L))
    t, s = np.arange(L)[:, None], np.arange(L)[None, :]
    visible = (s <= t) & (s > t - W)  # HF's sliding-window causal mask
    hf_mask = torch.tensor(np.where(visible, 0.0, -np.inf), dtype=torch.float32)[None, None]
    xt, post = torch.tensor(x), torch.tensor(pos)
    with torch.no_grad():
        embeddings = {k: rotary(xt, post, layer_type=k) for k in ("main", "compress")}
        expected = attn(xt, embeddings, post, hf_mask.expand(B, 1, L, L), cache=None)[0].numpy()
    params = jax.tree.map(jnp.asarray, _params_from_hf(attn, cfg))
    _, module, init_params, *_ = _setup(layer_type, L=8)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init_params)
    ours = _apply(cfg, layer_type)(
        {"params": params}, jnp.asarray(x), jnp.asarray(pos), causal_mask(B, L)
    )[0]
    err = float(np.abs(np.asarray(ours) - expected).max())
    print(f"{layer_type} (yarn={yarn}): max |ours - transformers| = {err:.2e}")
    assert err < 1e-4, err


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(layer_types=[SWA, CSA]), ["model.layer_types", "model.num_hidden_layers"]),
        (dict(layer_types=[SWA, "full_attention", CSA]), ["model.layer_types", "'full_attention'"]),
        (dict(num_key_value_heads=2), ["model.num_key_value_heads", "allowed: 1"]),
        (dict(partial_rotary_factor=0.0), ["model.partial_rotary_factor"]),
        (dict(partial_rotary_factor=0.1), ["model.partial_rotary_factor"]),  # 1.6 features
        (dict(q_lora_rank=None), ["model.q_lora_rank"]),
        (dict(sliding_window=0), ["model.sliding_window"]),
        (dict(o_groups=3), ["model.o_groups", "model.num_attention_heads"]),
        (dict(o_lora_rank=0), ["model.o_lora_rank"]),
        (
            dict(compress_rates=dict(compressed_sparse_attention=0)),
            ["model.compress_rates.compressed_sparse_attention"],
        ),
        (dict(index_topk=0), ["model.index_topk", "compressed_sparse_attention"]),
        (dict(index_n_heads=0), ["model.index_n_heads"]),
        (dict(index_head_dim=4), ["model.index_head_dim", "model.partial_rotary_factor"]),
        (dict(attention="mla"), ["model.layer_types", "model.attention='v4'"]),
    ],
)
def test_invalid_v4_attention_configs_name_their_fields(overrides, named):
    with pytest.raises(ValueError) as err:
        v4_config(**overrides)
    for name in named:
        assert name in str(err.value)


def test_config_fields_take_hugging_face_forms():
    with pytest.raises(ValueError, match="model.compress_rates"):
        v4_config(compress_rates=dict(sliding_attention=4))
    cfg = v4_config(layer_types=(SWA, SWA, SWA), index_topk=0)  # no CSA layer: no indexer
    assert cfg.layer_types == (SWA,) * 3 and hash(cfg)
    assert cfg.v4_rope_dim == 8
    assert v4_config().compress_rates.heavily_compressed_attention == 8
    assert make_config("tiny").layer_types == ()


def test_gradients_are_finite_and_the_indexer_gets_none():
    """The indexer only selects (and its inputs are detached): no gradient reaches it; the
    compressor, the sinks and the projections get one."""
    cfg, module, params, x, positions, mask = _setup(CSA)
    loss = lambda p: jnp.sum(module.apply({"params": p}, x, positions, mask)[0] ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["indexer"]))
    for name in ("sinks", "q_b_proj", "o_a_proj"):
        assert float(jnp.abs(grads[name]).max()) > 0, name
    for name in ("kv_proj", "gate_proj", "position_bias"):
        assert float(jnp.abs(grads["compressor"][name]).max()) > 0, name


def test_bfloat16_runs_and_decodes_as_its_full_forward():
    cfg, module, params, x, positions, mask = _setup(CSA)
    full32 = _apply(cfg, CSA)({"params": params}, x, positions, mask)[0]
    bf16 = v4_config(dtype="bfloat16")
    full = _apply(bf16, CSA)({"params": params}, x, positions, mask)[0]
    decoded = _decode(bf16, CSA, params, x, positions, [7] + [1] * 12)[0]
    assert full.dtype == decoded.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(decoded, np.float32), np.asarray(full, np.float32))
    assert float(jnp.abs(full.astype(jnp.float32) - full32).max()) < 0.1


@pytest.mark.parametrize("layer_idx", [0, 1, 2])
def test_cached_decode_matches_transformers_with_its_cache(layer_idx):
    """A 7-token prompt then 12 tokens one at a time, through transformers' DynamicCache (its
    DeepseekV4HCACache / DeepseekV4CSACache layers) and through ours."""
    torch = pytest.importorskip("torch")
    from transformers.cache_utils import DynamicCache

    cfg = v4_config()
    layer_type = cfg.layer_types[layer_idx]
    attn, rotary = _hf_attention(cfg, layer_idx)
    B, L, W, P = 2, 19, cfg.sliding_window, 7
    x = np.asarray(jax.random.normal(jax.random.key(3), (B, L, cfg.hidden_size)))
    hf_cache, outs = DynamicCache(config=attn.config), []
    with torch.no_grad():
        for lo, hi in [(0, P)] + [(t, t + 1) for t in range(P, L)]:
            xt, pos = torch.tensor(x[:, lo:hi]), torch.arange(lo, hi)[None].expand(B, -1)
            embeddings = {k: rotary(xt, pos, layer_type=k) for k in ("main", "compress")}
            # HF's cache holds the last W - 1 keys: its mask covers those and the new ones.
            q_slot, k_slot = np.arange(lo, hi)[:, None], np.arange(max(0, lo - W + 1), hi)[None]
            visible = (k_slot <= q_slot) & (k_slot > q_slot - W)
            mask = torch.tensor(np.where(visible, 0.0, -np.inf), dtype=torch.float32)
            mask = mask[None, None].expand(B, 1, -1, -1)
            outs.append(attn(xt, embeddings, pos, mask, cache=hf_cache)[0].numpy())
    params = jax.tree.map(jnp.asarray, _params_from_hf(attn, cfg))
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    ours = _decode(cfg, layer_type, params, jnp.asarray(x), positions, [P] + [1] * (L - P))[0]
    err = float(np.abs(np.asarray(ours) - np.concatenate(outs, axis=1)).max())
    print(f"{layer_type} decode: max |ours - transformers| = {err:.2e}")
    assert err < 1e-4, err
