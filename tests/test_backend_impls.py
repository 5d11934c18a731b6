"""Run-time choices by backend: what 'auto' resolves to, and each choice against the reference
('sparse' MoE dispatch, 'xla' einsum attention) on CPU; cuDNN only on a GPU."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from moe_rl import hf, main
from moe_rl.models import backend
from moe_rl.models.attention import attention_module
from moe_rl.models.config import ModelConfig, preset
from moe_rl.models.moe import MoE
from tests.utils import jitted_forward, make_config, random_batch


def resolved(name: str, backend_name: str, expert_parallel: int = 1, **overrides):
    m = ModelConfig.from_config(
        preset(name, **overrides), backend=backend_name, expert_parallel=expert_parallel
    )
    return m.dtype, m.moe_impl, m.attention_impl


@pytest.mark.parametrize(
    "name, backend_name, ep, want",
    [
        ("tiny", "cpu", 1, ("float32", "sparse", "xla")),
        ("tiny", "cpu", 4, ("float32", "sparse", "xla")),
        ("tiny", "gpu", 1, ("bfloat16", "ragged", "cudnn")),
        ("tiny", "gpu", 4, ("bfloat16", "sparse", "cudnn")),  # ragged has no EP form
        ("tiny", "tpu", 1, ("bfloat16", "ragged", "xla")),  # no TPU kernel in jax.nn's
        ("tiny", "tpu", 4, ("bfloat16", "sparse", "xla")),
        ("tiny_dense", "gpu", 1, ("bfloat16", "ragged", "cudnn")),
        ("tiny_dense", "cpu", 1, ("float32", "sparse", "xla")),
        ("tiny_v4", "gpu", 1, ("bfloat16", "ragged", "xla")),  # V4: einsum attention only
        ("tiny_v4", "tpu", 4, ("bfloat16", "sparse", "xla")),
    ],
)
def test_auto_resolves_by_backend_and_expert_parallelism(name, backend_name, ep, want):
    assert resolved(name, backend_name, ep) == want


def test_explicit_values_are_kept():
    over = dict(dtype="float32", moe_impl="dense", attention_impl="dot_product_attention")
    assert resolved("tiny", "gpu", **over) == ("float32", "dense", "dot_product_attention")
    assert resolved("tiny", "cpu", moe_impl="ragged") == ("float32", "ragged", "xla")
    # cuDNN needs bfloat16/float16: a float32 GPU run keeps the einsum attention.
    assert resolved("tiny", "gpu", dtype="float32") == ("float32", "ragged", "xla")
    assert resolved("tiny", "gpu", dtype="float16")[2] == "cudnn"


def test_cudnn_only_for_heads_it_takes():
    """MLA's head for cuDNN is the wider of qk (nope + rope) and v: DeepSeek-V3's 192 needs a
    Hopper GPU (256), not an older one (128); a width not a multiple of 8 never fits."""
    v3_heads = dict(qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    m = ModelConfig.from_config(preset("tiny", **v3_heads), backend="cpu")
    auto = dataclasses.replace(m, dtype="auto", attention_impl="auto")
    impl = lambda limit: backend.resolve_impls(auto, "gpu", 1, cudnn_head_dim=limit).attention_impl
    assert backend.attention_head_dim(m) == 192
    assert (impl(256), impl(128), impl(0)) == ("cudnn", "xla", "xla")
    assert resolved("tiny_dense", "gpu", head_dim=20)[2] == "xla"


@pytest.mark.parametrize(
    "overrides, backend_name, ep, words",
    [
        (dict(attention_impl="flash"), "cpu", 1, ["model.attention_impl", "'cudnn'", "'xla'"]),
        (dict(moe_impl="magic"), "cpu", 1, ["model.moe_impl", "'auto'", "'sparse'"]),
        (dict(dtype="float64"), "cpu", 1, ["model.dtype", "'auto'", "'bfloat16'"]),
        (dict(param_dtype="auto"), "cpu", 1, ["model.param_dtype", "'float32'"]),
        (dict(moe_impl="ragged"), "gpu", 2, ["model.moe_impl='ragged'", "mesh.expert=2"]),
        (dict(attention_impl="cudnn"), "cpu", 1, ["model.attention_impl='cudnn'", "'cpu'"]),
        (dict(attention_impl="cudnn", dtype="float32"), "gpu", 1, ["model.dtype", "'float32'"]),
    ],
)
def test_config_errors_name_the_key(overrides, backend_name, ep, words):
    with pytest.raises(ValueError) as e:
        resolved("tiny", backend_name, ep, **overrides)
    for word in words:
        assert word in str(e.value)


def test_v4_attention_is_einsum_only():
    with pytest.raises(ValueError, match=r"model.attention_impl='dot_product_attention'.*'v4'"):
        resolved("tiny_v4", "cpu", attention_impl="dot_product_attention")


def test_default_on_this_backend_and_hf_keeps_auto(tiny, tmp_path):
    """The defaults resolve with jax.default_backend() (float32 on the CPU the tests run on);
    a Hugging Face folder's model block keeps the run's 'auto' for the recipe to resolve."""
    cfg, params, state = tiny
    assert (cfg.dtype, cfg.param_dtype) == (
        ("float32", "float32") if jax.default_backend() == "cpu" else ("bfloat16", "float32")
    )
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    folder = hf.save_pretrained(str(tmp_path / "m"), cfg, params, state)
    config = ml_collections.ConfigDict(dict(init_checkpoint=folder, model=preset("tiny_dense")))
    block = hf.with_hf_model(config).model
    assert (block.dtype, block.moe_impl, block.attention_impl) == ("auto",) * 3
    assert block.attention == "mla" and ModelConfig.from_config(block).n_routed_experts == 8


def test_banner_prints_each_model_blocks_resolved_choices():
    config = ml_collections.ConfigDict(
        dict(model=preset("tiny"), teacher=dict(model=preset("tiny_dense", dtype="bfloat16")))
    )
    lines = main.model_lines(config)
    backend_name = jax.default_backend()
    assert lines[0].startswith("model: dtype=") and f"(resolved for {backend_name})" in lines[0]
    assert lines[1].startswith("teacher.model: dtype=bfloat16 (params float32), moe_impl=")
    config.model.n_routed_experts = 6  # invalid: the recipe reports it, the banner leaves it out
    assert main.model_lines(config) == []


def test_moe_layer_ragged_and_dense_equal_sparse():
    """The MoE layer (router, shared expert, routed experts): output and gradients per impl."""
    x = jax.random.normal(jax.random.key(0), (2, 12, 64))
    valid = jnp.ones((2, 12), bool)
    cfgs = {i: make_config("tiny", moe_impl=i) for i in ("sparse", "ragged", "dense")}
    variables = MoE(cfgs["sparse"]).init(jax.random.key(1), x, valid)

    def out_and_grads(impl):
        f = lambda p, x: jnp.sum(MoE(cfgs[impl]).apply({**variables, "params": p}, x, valid)[0])
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(variables["params"], x)

    want = out_and_grads("sparse")
    for impl in ("ragged", "dense"):
        chex.assert_trees_all_close(out_and_grads(impl), want, rtol=1e-5, atol=1e-5)


def attention_inputs(cfg, B=2, L=16):
    """x, positions and the decoder's mask: causal, two packed documents in row 0, padding
    (segment 0) at the end of row 1."""
    x = jax.random.normal(jax.random.key(0), (B, L, cfg.hidden_size))
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    seg = jnp.stack([jnp.repeat(jnp.array([1, 2]), L // 2), (jnp.arange(L) < L - 5) * 1])
    causal = jnp.arange(L)[None, :] <= jnp.arange(L)[:, None]
    mask = causal[None] & (seg[:, :, None] == seg[:, None, :])
    return x, positions, mask, seg > 0


def attention_out_and_grads(cfg, x, positions, mask, valid):
    """Output and gradients (params, x) of the valid tokens' outputs against a fixed cotangent."""
    module = attention_module(cfg)
    params = module.init(jax.random.key(1), x, positions, mask)
    dy = jax.random.normal(jax.random.key(2), x.shape) * valid[..., None]

    def f(p, x):
        out = module.apply(p, x, positions, mask)[0]
        return jnp.sum(out * dy), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, x)
    return out * valid[..., None], grads


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tiny", {}),  # MLA: v (16) narrower than qk (24), padded
        ("tiny", dict(v_head_dim=32)),  # v wider than qk: q and k padded
        ("tiny", dict(q_lora_rank=None)),
        ("tiny_v32", {}),  # DSA: the top-k mask
        ("tiny_dense", {}),  # GQA, 2 query heads per key head
    ],
)
def test_dot_product_attention_equals_xla(name, overrides):
    """jax.nn.dot_product_attention (XLA's implementation on CPU) against the einsum
    attention: full forward, causal with packed documents and padding, values and grads."""
    ref = make_config(name, attention_impl="xla", **overrides)
    dpa = make_config(name, attention_impl="dot_product_attention", **overrides)
    inputs = attention_inputs(ref)
    chex.assert_trees_all_close(
        attention_out_and_grads(dpa, *inputs),
        attention_out_and_grads(ref, *inputs),
        rtol=1e-5,
        atol=1e-6,
    )


def test_model_logits_equal_across_attention_impls(tiny):
    """The whole decoder (MTP included) with dot_product_attention: the same logits."""
    cfg, params, state = tiny
    dpa = make_config("tiny", attention_impl="dot_product_attention")
    tokens, positions = random_batch(cfg, batch=2, length=16)
    run = lambda c: jitted_forward(c)(params, state, tokens, positions)
    (want, _, aux_ref), (got, _, aux) = run(cfg), run(dpa)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(aux["mtp_logits"], aux_ref["mtp_logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny_dense"])
def test_cudnn_equals_xla_on_gpu(name):
    """cuDNN's flash attention in bfloat16 against the einsum attention (a GPU only)."""
    if jax.default_backend() != "gpu":
        pytest.skip(f"needs a GPU (cuDNN flash attention); the backend is {jax.default_backend()}")
    ref = make_config(name, dtype="bfloat16", attention_impl="xla")
    fused = make_config(name, dtype="bfloat16", attention_impl="cudnn")
    inputs = attention_inputs(ref)
    got, want = attention_out_and_grads(fused, *inputs), attention_out_and_grads(ref, *inputs)
    chex.assert_trees_all_close(got, want, rtol=5e-2, atol=5e-2)
