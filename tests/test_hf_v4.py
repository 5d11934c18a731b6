"""DeepSeek-V4 through Hugging Face: a tiny random transformers DeepseekV4ForCausalLM (tiny_v4's
shape: sliding, CSA, HCA and CSA layers; mHC; a hash-routed layer) saved by `save_pretrained`
loads to the same logits (full forward and cached decode, 40 tokens so compressed blocks of 4
and 16 close and the 32-token window slides), our own random tiny_v4 exports to a folder
transformers loads to our logits and that reads back bit for bit, and unsupported V4 fields
are errors naming them. PyTorch, CPU, float32; skipped without torch/transformers.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from moe_rl import hf
from moe_rl.models import transformer
from moe_rl.models.moe import BIAS_COLLECTION, HASH_COLLECTION
from tests.utils import jitted_forward, make_config

B, L, PREFILL = 2, 40, 13


def hf_v4_config(cfg):
    """transformers' DeepseekV4Config of our V4 ModelConfig `cfg` (tiny_v4)."""
    import transformers

    return transformers.DeepseekV4Config(
        **{k: v for k, v in hf.hf_config(cfg).items() if k not in ("architectures", "torch_dtype")}
    )


def randomize(model, seed=0):
    """Every weight random and nothing trivially zero: norms ~1, sinks, position biases, mHC
    base/scale, routing biases ~N(0, 0.5), matrices ~N(0, 0.1), tid2eid a random table."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    E = model.config.n_routed_experts
    with torch.no_grad():
        buffers = [
            (n, b)
            for n, b in model.named_buffers()
            if n.endswith(("tid2eid", "e_score_correction_bias"))  # not the rotary inv_freq
        ]
        for name, t in list(model.named_parameters()) + buffers:
            noise = torch.randn(t.shape, generator=gen) if t.is_floating_point() else None
            if name.endswith("tid2eid"):
                rows = [torch.randperm(E, generator=gen)[: t.shape[1]] for _ in range(t.shape[0])]
                t.copy_(torch.stack(rows))
            elif name.endswith("norm.weight"):
                t.copy_(1 + 0.1 * noise)
            elif t.ndim == 1 or name.endswith("position_bias"):
                t.copy_(0.5 * noise)
            else:
                t.copy_(0.1 * noise)
    return model.eval()


def ours_random(path, x, rng):
    """The same draws for one of our parameters (by its path) as `randomize` makes."""
    noise = rng.normal(size=x.shape)
    if jax.tree_util.keystr(path).endswith("['scale']") and "_hc" not in jax.tree_util.keystr(path):
        value = 1 + 0.1 * noise
    elif x.ndim == 1 or "position_bias" in jax.tree_util.keystr(path):
        value = 0.5 * noise
    else:
        value = 0.1 * noise
    return jnp.asarray(value, x.dtype)


def torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def positions():
    return jnp.broadcast_to(jnp.arange(L), (B, L))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(transformers model, the folder save_pretrained wrote, tokens, its logits)."""
    transformers = pytest.importorskip("transformers")
    model = randomize(transformers.DeepseekV4ForCausalLM(hf_v4_config(make_config("tiny_v4"))))
    folder = str(tmp_path_factory.mktemp("deepseek_v4"))
    model.save_pretrained(folder)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (B, L))
    return model, folder, tokens, torch_logits(model, tokens)


@pytest.fixture(scope="module")
def loaded(saved):
    """(cfg, params, state) read from the saved folder, and our jitted forward of cfg."""
    cfg, params, state = hf.load_pretrained(saved[1])
    return cfg, params, state, jitted_forward(cfg, mtp=False)


def decode_logits(forward, cfg, params, state, tokens):
    """A PREFILL-token prefill, then one token at a time from our cache."""
    cache, pos, out = transformer.init_cache(cfg, B, L + 8), positions(), []
    for lo, hi in [(0, PREFILL)] + [(i, i + 1) for i in range(PREFILL, L)]:
        logits, cache, _ = forward(
            params, state, jnp.asarray(tokens[:, lo:hi]), pos[:, lo:hi], None, cache
        )
        out.append(np.asarray(logits))
    return np.concatenate(out, axis=1)


def test_config_maps_every_v4_field(saved, loaded):
    cfg = loaded[0]
    assert hf.model_config(saved[1]) == cfg
    # tiny_v4's, but intermediate_size (the width of dense layers, which V4 has none of)
    want = hf._fields_of(make_config("tiny_v4", intermediate_size=cfg.moe_intermediate_size))
    assert hf._fields_of(cfg) == want


def test_logits_match_transformers_full_forward_and_cached_decode(saved, loaded):
    model, _, tokens, expected = saved
    cfg, params, state, forward = loaded
    assert np.abs(expected).max() > 1  # logits far from trivial
    full = np.asarray(forward(params, state, jnp.asarray(tokens), positions())[0])
    decoded = decode_logits(forward, cfg, params, state, tokens)
    errs = [float(np.abs(x - expected).max()) for x in (full, decoded)]
    print(f"V4 max |ours - transformers|: full {errs[0]:.2e}, cached decode {errs[1]:.2e}")
    np.testing.assert_allclose(full, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(decoded, expected, atol=1e-4, rtol=0)


def test_our_export_loads_in_transformers_and_reads_back_bit_for_bit(loaded, saved, tmp_path):
    import transformers

    _, src, tokens, _ = saved
    cfg, _, _, forward = loaded
    params, state = jax.jit(lambda key: transformer.init(cfg, key))(jax.random.key(1))
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(lambda p, x: ours_random(p, x, rng), params)
    state = {
        BIAS_COLLECTION: jax.tree.map(
            lambda b: jnp.asarray(rng.normal(size=b.shape), b.dtype), state[BIAS_COLLECTION]
        ),
        HASH_COLLECTION: jax.tree.map(
            lambda t: jnp.asarray(
                np.stack([rng.permutation(cfg.n_routed_experts)[: t.shape[1]] for _ in t]),
                t.dtype,
            ),
            state[HASH_COLLECTION],
        ),
    }
    out = hf.save_pretrained(str(tmp_path / "export"), cfg, params, state)
    # The names, shapes and dtypes transformers' own save_pretrained writes.
    ours, theirs = (
        load_file(os.path.join(out, "model.safetensors")),
        load_file(os.path.join(src, "model.safetensors")),
    )
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {
        k: (v.shape, v.dtype) for k, v in theirs.items()
    }
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "DeepseekV4ForCausalLM"
    ours_logits = np.asarray(forward(params, state, jnp.asarray(tokens), positions())[0])
    err = float(np.abs(torch_logits(reloaded, tokens) - ours_logits).max())
    print(f"V4 export: max |transformers - ours| = {err:.2e}")
    assert err < 1e-4, err
    cfg2, params2, state2 = hf.load_pretrained(out)
    assert cfg2 == cfg
    chex.assert_trees_all_equal(params2, params)
    chex.assert_trees_all_equal(state2, state)
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "deepseek_v4"


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(scoring_func="softmax"), ["scoring_func='softmax'", "sqrtsoftplus"]),
        (dict(n_shared_experts=2), ["n_shared_experts=2"]),
        (dict(mlp_bias=True), ["mlp_bias=True"]),
        (dict(tie_word_embeddings=True), ["tie_word_embeddings=True"]),
        (dict(hidden_act="gelu"), ["hidden_act='gelu'"]),
        (dict(expert_dtype="fp4"), ["unknown field(s) ['expert_dtype']"]),
        (
            dict(
                rope_parameters=dict(
                    main=dict(rope_type="yarn", rope_theta=1e4, factor=4.0),
                    compress=dict(rope_type="default", rope_theta=1.6e5),
                )
            ),
            ["rope_parameters.main.rope_type='yarn'"],
        ),
        (
            dict(
                rope_parameters=dict(
                    main=dict(rope_type="default", rope_theta=1e4),
                    compress=dict(rope_type="yarn", rope_theta=1.6e5, factor=4.0),
                )
            ),
            ["rope_parameters.compress.attention_factor=None"],
        ),
    ],
)
def test_unsupported_v4_fields_are_named(saved, tmp_path, changes, named):
    folder = str(tmp_path / "copy")
    os.makedirs(folder)
    config = json.load(open(os.path.join(saved[1], "config.json")))
    json.dump({**config, **changes}, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ValueError) as err:
        hf.architecture_fields(json.load(open(os.path.join(folder, "config.json"))), folder)
    for name in named:
        assert name in str(err.value)


def test_v4_fields_take_hugging_faces_flat_and_legacy_forms(saved):
    config = json.load(open(os.path.join(saved[1], "config.json")))
    flat = {k: v for k, v in config.items() if k not in ("rope_parameters", "layer_types")}
    flat.update(
        rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
        compress_ratios=[0, 4, 128, 4],
        compress_rate_hca=16,
        mlp_layer_types=None,
        num_hash_layers=1,
    )
    f = hf.architecture_fields(flat)
    assert f["layer_types"] == list(make_config("tiny_v4").layer_types)
    assert f["compress_rates"]["heavily_compressed_attention"] == 16
    assert f["mlp_layer_types"] == ["hash_moe", "moe", "moe", "moe"]
    assert f["rope_scaling"]["factor"] == 4.0 and f["compress_rope_theta"] == 160000.0


def test_v4_exports_need_a_v4_block():
    with pytest.raises(ValueError, match="first_k_dense_replace=1"):
        hf.hf_config(make_config("tiny_v4", first_k_dense_replace=1, mlp_layer_types=("moe",) * 4))
    with pytest.raises(ValueError, match="n_shared_experts"):
        hf.hf_config(make_config("tiny_v4", n_shared_experts=2))
    with pytest.raises(ValueError, match="without model.attention='v4'"):
        hf.hf_config(make_config("tiny", hc_mult=4, num_nextn_predict_layers=0))
