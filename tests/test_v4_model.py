"""The DeepSeek-V4 decoder with its own attention (`tiny_v4`: a sliding, two compressed sparse
and a heavily compressed layer; mHC; a hash-routed layer): parameter counts, cached decoding
against the full forward (padded prompts), GRPO's shared-prefix rows against separate rows,
config errors, and the presets through pretraining and R1-Zero's smoke path.
"""

import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_rl.models import counting, transformer
from moe_rl.models.config import preset
from moe_rl.recipes import pretrain, r1_zero
from moe_rl.train import grpo_step, rollout
from tests.test_grpo import digits, small_config, training_rows
from tests.utils import ROOT, jitted_forward, make_config, tiny_pretrain_config


@pytest.fixture(scope="module")
def model():
    cfg = make_config("tiny_v4")
    params, state = jax.jit(lambda key: transformer.init(cfg, key))(jax.random.key(0))
    return cfg, params, state


def _padded_batch(cfg, B, L, pad, seed=1):
    """Random tokens, row 1 left-padded by `pad` slots (segment 0, positions from 0 after it)."""
    tokens = jax.random.randint(jax.random.key(seed), (B, L), 0, cfg.vocab_size)
    seg = np.ones((B, L), np.int32)
    seg[1, :pad] = 0
    positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
    return tokens, jnp.asarray(positions), jnp.asarray(seg)


def test_tree_follows_layer_types_and_counts_match(model):
    cfg, params, state = model
    flat = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    attn = lambda stack, i: {
        k.split("/attn/")[1] for k in flat if k.startswith(f"{stack}/{i}/attn/")
    }
    sliding = attn("hash_layers", 0)  # layer 0: sliding_attention, hash-routed FFN
    assert not [k for k in sliding if "compressor" in k or "indexer" in k]
    assert {"q_a_proj", "q_b_proj", "kv_proj", "sinks", "o_a_proj", "o_b_proj"} <= sliding
    csa, hca = attn("moe_layers", 0), attn("moe_layers", 1)  # layers 1 and 2
    assert any(k.startswith("indexer/") for k in csa) and any("compressor/" in k for k in csa)
    assert not [k for k in hca if k.startswith("indexer/")]
    assert [k for k in hca if k.startswith("compressor/")]
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert counting.param_counts(cfg)["total"] == total
    assert set(state) == {"moe_bias", "moe_hash"}
    small = make_config("small_v4")
    small_params = jax.eval_shape(lambda: transformer.init(small, jax.random.key(0)))[0]
    small_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(small_params))
    assert counting.param_counts(small)["total"] == small_total
    # Attention FLOPs grow with the context only through the compressed entries: a model of
    # sliding layers costs the same at any length past twice its window.
    f = lambda c, L: counting.flops_per_token(c, L)
    assert f(cfg, 64) < f(cfg, 512) < f(cfg, 4096)
    sliding = make_config("tiny_v4", layer_types=("sliding_attention",) * 4)
    assert f(sliding, 2 * cfg.sliding_window) == f(sliding, 4096) < f(cfg, 4096)


def test_cached_decode_equals_the_full_forward(model):
    """A 13-token prefill then one token at a time (blocks of 4 and 16 close on the way, the
    32-token window slides) gives the full forward's logits, a left-padded row included."""
    cfg, params, state = model
    B, L = 2, 45
    tokens, positions, seg = _padded_batch(cfg, B, L, pad=3)
    full = jitted_forward(cfg, False)(params, state, tokens, positions, seg)[0]
    step = jitted_forward(cfg, False)
    cache = transformer.init_cache(cfg, B, 64)
    logits, cache, _ = step(params, state, tokens[:, :13], positions[:, :13], seg[:, :13], cache)
    outs = [logits]
    for t in range(13, L):
        logits, cache, _ = step(
            params, state, tokens[:, t : t + 1], positions[:, t : t + 1], seg[:, t : t + 1], cache
        )
        outs.append(logits)
    valid = np.asarray(seg)[..., None] > 0
    np.testing.assert_allclose(
        np.where(valid, jnp.concatenate(outs, axis=1), 0), np.where(valid, full, 0), atol=2e-5
    )
    # The repeated cache decodes each prompt's samples alike.
    rep = transformer.repeat_cache(cfg, cache, 2)
    assert jax.tree.map(lambda a: a.shape[0], rep["moe"][0]) == jax.tree.map(
        lambda a: 2 * a.shape[0], cache["moe"][0]
    )


def test_shared_prefix_rows_equal_separate_rows(model):
    """GRPO's packed row [prompt | G completions] with shared_prefix=(P, G) (V4 attends it as G
    rows, compressed_attention.prefix_rows) gives each completion's logits of its own row, and
    the completion log-probs through grpo_step; P, N not multiples of the block sizes."""
    cfg, params, state = model
    B, P, G, N = 2, 21, 3, 11
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 259, (B, P)).astype(np.int32)
    comps = rng.integers(3, 259, (B, G, N)).astype(np.int32)
    seg_p = np.ones((B, P), np.int32)
    seg_p[1, :4] = 0  # a left-padded prompt
    pos_p = np.maximum(np.cumsum(seg_p, 1) - 1, 0)
    row = np.concatenate([prompt, comps.reshape(B, G * N)], 1)
    seg = np.concatenate([seg_p, np.repeat(2 + np.arange(G), N)[None].repeat(B, 0)], 1)
    seg[0, P + N - 3 : P + N] = 0  # completion 0 of row 0 ended early: padding after it
    pos_c = pos_p[:, -1:] + 1 + np.arange(N)
    pos = np.concatenate([pos_p, np.tile(pos_c, (1, G))], 1)
    packed = jax.jit(
        lambda t, q, s: transformer.forward(
            cfg, params, state, t, q, s, mtp=False, shared_prefix=(P, G)
        )[0]
    )(row, pos, seg)
    for g in range(G):
        own_seg = np.concatenate([seg_p, (seg[:, P + g * N : P + (g + 1) * N] > 0)], 1)  # 1 doc
        own = jitted_forward(cfg, False)(
            params,
            state,
            np.concatenate([prompt, comps[:, g]], 1),
            np.concatenate([pos_p, pos_c], 1),
            own_seg,
        )[0]
        keep = own_seg[:, P:, None] > 0
        np.testing.assert_allclose(
            np.where(keep, packed[:, P + g * N : P + (g + 1) * N], 0),
            np.where(keep, own[:, P:], 0),
            atol=2e-5,
        )
        np.testing.assert_allclose(packed[:, :P][seg_p > 0], own[:, :P][seg_p > 0], atol=2e-5)
    logp = grpo_step.completion_logprobs(cfg, params, state, row, seg, pos, P, G, 1.0)
    assert logp.shape == (B, G, N) and np.all(np.isfinite(np.asarray(logp)))


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(scan_layers=True), ["model.scan_layers=True", "model.layer_types"]),
        (dict(num_nextn_predict_layers=1), ["model.num_nextn_predict_layers=1", "allowed: 0"]),
        (dict(layer_types=("sliding_attention",) * 3), ["model.layer_types has 3 entries"]),
    ],
)
def test_v4_config_errors_name_the_key(overrides, named):
    with pytest.raises(ValueError) as err:
        make_config("tiny_v4", **overrides)
    for name in named:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["tiny_v32", "tiny_v4"])
def test_preset_pretrains_then_runs_r1_zero(name, tmp_path, monkeypatch):
    """Each generation's preset through the real recipes: three pretraining steps, then two
    GRPO steps from that checkpoint whose sampler and trainer log-probs agree (float32)."""
    base = tmp_path / "base"
    config = tiny_pretrain_config(3, data=1)
    config.model = preset(name)
    # experiments/pretrain_moe.py:<preset> trains V4's matrices with Muon, as V4 does
    experiment = runpy.run_path(os.path.join(ROOT, "experiments/pretrain_moe.py"))
    config.optim = experiment["get_config"](name).optim
    assert config.optim.name == ("muon" if name == "tiny_v4" else "adamw")
    summary = pretrain.run(config, str(base))
    assert summary["steps"] == 3 and np.isfinite(summary["final_val_loss"])
    monkeypatch.setattr(rollout.Roller, "score", digits)
    rl = small_config(str(base), **{"grpo.num_steps": 2, "grpo.old_logprobs": "recompute"})
    rl.model = preset(name)
    r1_zero.run(rl, str(tmp_path / "rl"))
    rows = training_rows(tmp_path / "rl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(np.isfinite(v) for v in r.values())
        assert 0 <= r["mismatch_max"] < 1e-4, r["mismatch_max"]


def test_generations_table_side_by_side(tmp_path, capsys):
    """experiments/generations.py's recipe at toy sizes: one column per preset; MLA's cache
    bytes per token are the same at every context, V4's fall with it (a fixed window plus one
    entry per m tokens), and the V3.2 indexer's key adds to MLA's."""
    from moe_rl.recipes import summary

    config = runpy.run_path(os.path.join(ROOT, "experiments/generations.py"))["get_config"]()
    config.update_from_flattened_dict({"batch_size": 1, "seq_len": 16})
    results = summary.compare(config, str(tmp_path))
    assert list(results) == ["tiny", "tiny_v32", "tiny_v4"]
    cache = {
        n: [r["at_context"][c]["kv_cache_bytes_per_token"] for c in config.contexts]
        for n, r in results.items()
    }
    assert len(set(cache["tiny"])) == 1 and cache["tiny_v32"][0] > cache["tiny"][0]
    assert cache["tiny_v4"] == sorted(cache["tiny_v4"], reverse=True) and cache["tiny_v4"][-1] > 0
    assert cache["tiny_v4"][0] < cache["tiny"][0]
    table = (tmp_path / "generations.md").read_text()
    assert table.splitlines()[0].count("`tiny") == 3 and table in capsys.readouterr().out
