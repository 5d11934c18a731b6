"""Hugging Face import/export: logits parity with `transformers` (PyTorch, CPU, float32) on tiny
random models, the recipes on a Hugging Face base, and errors that name what is wrong.

The parity tests need the `hf` extra (torch + transformers), which `.ci/run` installs; the
format tests below them need neither.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from moe_rl import hf
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, model_config_dict, preset
from tests.utils import ROOT, jitted_forward, make_config

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
)
MLA = dict(
    kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, num_key_value_heads=4
)
MOE = dict(
    moe_intermediate_size=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
)
YARN = dict(
    type="yarn",
    factor=4.0,
    original_max_position_embeddings=16,
    mscale=0.707,
    mscale_all_dim=0.707,
    beta_fast=32.0,
    beta_slow=1.0,
)
# name -> (transformers class names, config kwargs)
MODELS = {
    # DeepSeek-V3: sigmoid routing, 4 groups (top-2 groups), correction bias, q compression.
    "deepseek_v3": (
        "DeepseekV3",
        dict(**COMMON, **MLA, **MOE, q_lora_rank=16, n_group=4, topk_group=2),
    ),
    # DeepSeek-V3.2: V3 with sparse attention, each query on its 4 best keys of the 12 by a
    # 16-head lightning indexer (16 heads: a tie at index score 0 is a 1 in 65536 event).
    "deepseek_v32": (
        "DeepseekV32",
        dict(
            **COMMON,
            **MLA,
            **MOE,
            q_lora_rank=16,
            n_group=4,
            topk_group=2,
            index_topk=4,
            index_n_heads=16,
            index_head_dim=8,
        ),
    ),
    # DeepSeek-V3 layout without query compression (as Moonlight / V2-Lite).
    "deepseek_v3_no_q_lora": (
        "DeepseekV3",
        dict(**COMMON, **MLA, **MOE, q_lora_rank=None, n_group=1, topk_group=1),
    ),
    # DeepSeek-V2: softmax routing, group-limited greedy, YaRN with mscale (as V2-Lite).
    "deepseek_v2": (
        "DeepseekV2",
        dict(
            **COMMON,
            **MLA,
            **MOE,
            q_lora_rank=None,
            n_group=4,
            topk_group=2,
            topk_method="group_limited_greedy",
            rope_scaling=YARN,
        ),
    ),
    # Qwen2: GQA (4 query heads on 2 KV heads), q/k/v biases, tied embeddings, half rotation.
    "qwen2": ("Qwen2", dict(**COMMON, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama": ("Llama", dict(**COMMON, num_key_value_heads=2, head_dim=16)),
}
B, L = 2, 12


def randomize(model, seed=0):
    """Every weight ~N(0, 0.15^2), norms ~1 +- 0.1 and the routing bias +-0.05: logits of a
    few units, routing far from ties (transformers' init is too small to test anything)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if p.ndim == 1 and p.shape[0] != 0 else 0.15 * noise)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    return model.eval()


def torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


@pytest.fixture(scope="module", params=list(MODELS))
def saved(request, tmp_path_factory):
    """(name, transformers model, folder it was saved to, random tokens, its logits)."""
    transformers = pytest.importorskip("transformers")
    family, kwargs = MODELS[request.param]
    config = getattr(transformers, f"{family}Config")(**kwargs)
    model = randomize(getattr(transformers, f"{family}ForCausalLM")(config))
    folder = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(folder)
    tokens = np.random.default_rng(0).integers(0, COMMON["vocab_size"], (B, L))
    return request.param, model, folder, tokens, torch_logits(model, tokens)


def positions():
    return jnp.broadcast_to(jnp.arange(L), (B, L))


def decode_logits(cfg, params, state, tokens, prefill=5):
    """Logits of a prefill of `prefill` tokens then one token at a time, from the KV cache."""
    forward = jitted_forward(cfg, mtp=False)
    cache = transformer.init_cache(cfg, B, L + 4)
    pos = positions()
    out = []
    for lo, hi in [(0, prefill)] + [(i, i + 1) for i in range(prefill, L)]:
        logits, cache, _ = forward(
            params, state, jnp.asarray(tokens[:, lo:hi]), pos[:, lo:hi], None, cache
        )
        out.append(np.asarray(logits))
    return np.concatenate(out, axis=1)


def full_logits(cfg, params, state, tokens):
    return np.asarray(
        jitted_forward(cfg, mtp=False)(params, state, jnp.asarray(tokens), positions())[0]
    )


def test_config_maps_the_architecture(saved):
    name, model, folder, _, _ = saved
    cfg = hf.model_config(folder)
    assert cfg.attention == ("mla" if name.startswith("deepseek") else "gqa")
    assert cfg.rope_interleave == name.startswith("deepseek")
    if name == "deepseek_v3":
        assert (cfg.q_lora_rank, cfg.n_group, cfg.topk_group, cfg.scoring_func) == (
            16,
            4,
            2,
            "sigmoid",
        )
        assert cfg.num_moe_layers == 2 and cfg.routed_scaling_factor == 2.5
    if name == "deepseek_v3_no_q_lora":
        assert cfg.q_lora_rank is None
    if name == "deepseek_v32":
        assert (cfg.index_topk, cfg.index_n_heads, cfg.index_head_dim) == (4, 16, 8)
        assert cfg.num_moe_layers == 2 and cfg.scoring_func == "sigmoid" and cfg.n_group == 4
    else:
        assert cfg.index_topk == 0
    if name == "deepseek_v2":
        assert (cfg.scoring_func, cfg.norm_topk_prob, cfg.n_group) == ("softmax", False, 4)
        assert cfg.rope_scaling.factor == 4.0 and cfg.rope_scaling.mscale_all_dim == 0.707
    if name == "qwen2":
        assert cfg.attention_bias and cfg.tie_word_embeddings and cfg.num_key_value_heads == 2
    if name == "llama":
        assert not cfg.attention_bias and cfg.head_dim == 16


def test_logits_match_transformers_full_forward_and_cached_decode(saved):
    name, _, folder, tokens, expected = saved
    cfg, params, state = hf.load_pretrained(folder)
    logits = full_logits(cfg, params, state, tokens)
    chex.assert_shape(logits, (B, L, COMMON["vocab_size"]))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(decode_logits(cfg, params, state, tokens), expected, atol=1e-4)
    if name in ("deepseek_v3", "deepseek_v32"):  # the absorbed decode above; the expanded one too
        plain = hf.model_config(folder, mla_absorb=False)
        np.testing.assert_allclose(decode_logits(plain, params, state, tokens), expected, atol=1e-4)


# The same for every family: one MLA MoE and one GQA model.
@pytest.mark.parametrize("saved", ["deepseek_v3", "qwen2"], indirect=True)
def test_scanned_layers_load_to_the_same_logits(saved):
    name, _, folder, tokens, expected = saved
    cfg, params, state = hf.load_pretrained(folder, scan_layers=True)
    assert "scan" in params["moe_layers" if cfg.is_moe else "dense_layers"]
    np.testing.assert_allclose(full_logits(cfg, params, state, tokens), expected, atol=1e-4)


def test_export_loads_in_transformers_with_the_same_logits(saved, tmp_path):
    import transformers

    name, model, folder, tokens, expected = saved
    cfg, params, state = hf.load_pretrained(folder)
    out = hf.save_pretrained(str(tmp_path / "export"), cfg, params, state)
    assert json.load(open(os.path.join(out, "config.json")))["architectures"] == (
        model.config.architectures or [type(model).__name__]
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(model)
    np.testing.assert_allclose(torch_logits(reloaded, tokens), expected, atol=1e-6, rtol=0)
    # ...and every tensor is the original's, bit for bit.
    original, exported = load_file(os.path.join(folder, "model.safetensors")), {}
    for file in os.listdir(out):
        if file.endswith(".safetensors"):
            exported.update(load_file(os.path.join(out, file)))
    assert set(exported) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


# The same for every family: one MLA MoE and one GQA model.
@pytest.mark.parametrize("saved", ["deepseek_v3", "qwen2"], indirect=True)
def test_bfloat16_params_are_cast_on_load(saved):
    name, _, folder, tokens, expected = saved
    cfg, params, state = hf.load_pretrained(folder, param_dtype="bfloat16", dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))  # the routing bias
    logits = full_logits(cfg, params, state, tokens)
    assert np.mean(np.argmax(logits, -1) == np.argmax(expected, -1)) > 0.7


# ----------------------------------------------------------------------------------------------
# Without torch: our own models written and read back.


def scanned(tree: dict) -> dict:
    """A tree of unrolled layers ('0', '1', ...) in the scan_layers layout: each layer stack as
    one 'scan/layer' subtree with the layers on a leading axis."""
    out = dict(tree)
    for kind in ("dense_layers", "moe_layers"):
        if kind in tree:
            layers = [tree[kind][str(i)] for i in range(len(tree[kind]))]
            out[kind] = {"scan": {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}
    return out


@pytest.fixture()
def tiny_with_bias(tiny):
    """scan_layers -> the tiny preset (MLA, 8 experts in 4 groups, MTP depth 1) with random
    routing biases, in the unrolled or the scanned layout."""
    cfg, params, state = tiny
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    state = jax.tree.unflatten(
        tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )

    def layout(scan_layers: bool):
        if not scan_layers:
            return cfg, params, state
        scan_cfg = make_config("tiny", scan_layers=True)
        return scan_cfg, scanned(params), {"moe_bias": scanned(state["moe_bias"])}

    return layout


def architecture(cfg: ModelConfig) -> dict:
    fields = hf._fields_of(cfg)
    return {k: v for k, v in fields.items() if k not in hf.RUNTIME_FIELDS + ("initializer_range",)}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_round_trip_keeps_every_array_including_mtp_and_bias(tmp_path, tiny_with_bias, scan_layers):
    cfg, params, state = tiny_with_bias(scan_layers)
    chex.assert_trees_all_equal_shapes(
        params, jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))[0]
    )
    folder = hf.save_pretrained(str(tmp_path), cfg, params, state)
    stored = load_file(os.path.join(folder, "model.safetensors"))
    L = cfg.num_hidden_layers
    assert f"model.layers.{L}.eh_proj.weight" in stored  # MTP as DeepSeek-V3 stores it
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in stored
    loaded_cfg, loaded_params, loaded_state = hf.load_pretrained(folder, scan_layers=scan_layers)
    assert architecture(loaded_cfg) == architecture(cfg)
    chex.assert_trees_all_equal(loaded_params, params)
    chex.assert_trees_all_equal(loaded_state, state)


def test_mtp_projection_halves_follow_deepseeks_order(tmp_path, tiny_with_bias):
    """DeepSeek's eh_proj acts on [enorm(emb); hnorm(h)]; ours on [hnorm(h); enorm(emb)]."""
    cfg, params, state = tiny_with_bias(False)
    folder = hf.save_pretrained(str(tmp_path), cfg, params, state)
    stored = load_file(os.path.join(folder, "model.safetensors"))
    w = stored[f"model.layers.{cfg.num_hidden_layers}.eh_proj.weight"]  # [D, 2D]
    ours = np.asarray(params["mtp_1_eh_proj"])  # [2D, D]
    D = cfg.hidden_size
    e, h = np.random.default_rng(0).normal(size=(2, D)).astype(np.float32)
    np.testing.assert_allclose(
        w @ np.concatenate([e, h]), np.concatenate([h, e]) @ ours, rtol=1e-5, atol=1e-5
    )


def test_dense_mla_model_round_trips(tmp_path):
    """MLA without routed experts: DeepseekV3 with every layer dense."""
    cfg = make_config("tiny", n_routed_experts=0, num_nextn_predict_layers=0)
    params, state = jax.jit(lambda: transformer.init(cfg, jax.random.key(0)))()
    folder = hf.save_pretrained(str(tmp_path), cfg, params, state)
    loaded_cfg, loaded, loaded_state = hf.load_pretrained(folder)
    assert not loaded_cfg.is_moe and loaded_cfg.num_dense_layers == cfg.num_hidden_layers
    chex.assert_trees_all_equal(loaded, params)
    assert loaded_state == {}


@pytest.fixture()
def v32_folder(tmp_path):
    """(cfg, params, state, folder): the tiny_v32 preset (sparse attention, MTP depth 1) with
    random routing biases, saved."""
    cfg = make_config("tiny_v32")
    params, state = jax.jit(lambda: transformer.init(cfg, jax.random.key(0)))()
    state = jax.tree.map(lambda b: b + 0.01 * jnp.arange(b.shape[-1]), state)
    return cfg, params, state, hf.save_pretrained(str(tmp_path / "v32"), cfg, params, state)


def test_sparse_attention_model_round_trips_as_deepseek_v32(v32_folder):
    cfg, params, state, folder = v32_folder
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architectures"] == ["DeepseekV32ForCausalLM"]
    assert (config["index_topk"], config["index_n_heads"], config["index_head_dim"]) == (8, 4, 16)
    stored = load_file(os.path.join(folder, "model.safetensors"))
    L = cfg.num_hidden_layers
    for layer in (0, L):  # a decoder layer and the MTP layer each have an indexer
        w = stored[f"model.layers.{layer}.self_attn.indexer.wq_b.weight"]
        assert w.shape == (cfg.index_n_heads * cfg.index_head_dim, cfg.q_lora_rank)
        assert stored[f"model.layers.{layer}.self_attn.indexer.k_norm.bias"].shape == (16,)
    loaded_cfg, loaded, loaded_state = hf.load_pretrained(folder)
    assert architecture(loaded_cfg) == architecture(cfg)
    chex.assert_trees_all_equal(loaded, params)
    chex.assert_trees_all_equal(loaded_state, state)


def test_deepseek_v32_mlp_layer_types_must_be_dense_then_moe(v32_folder):
    folder = v32_folder[3]
    rewrite_config(folder, mlp_layer_types=["dense", "dense", "sparse"])
    assert hf.model_config(folder).first_k_dense_replace == 2
    rewrite_config(folder, mlp_layer_types=["sparse", "dense", "sparse"])
    with pytest.raises(ValueError, match="mlp_layer_types=\\['sparse', 'dense', 'sparse'\\]"):
        hf.model_config(folder)


def test_dense_gqa_model_exports_as_llama_or_qwen2(tmp_path):
    cfg = make_config("tiny_dense")
    assert hf.hf_config(cfg)["architectures"] == ["LlamaForCausalLM"]
    biased = ModelConfig.from_config(
        model_config_dict(**{**hf._fields_of(cfg), "attention_bias": True})
    )
    assert hf.hf_config(biased)["architectures"] == ["Qwen2ForCausalLM"]
    params, state = jax.jit(lambda: transformer.init(biased, jax.random.key(0)))()
    folder = hf.save_pretrained(str(tmp_path), biased, params, state)
    modes = {f: os.stat(os.path.join(folder, f)).st_mode & 0o777 for f in os.listdir(folder)}
    assert modes and set(modes.values()) == {0o644}, modes  # others can read the export
    loaded_cfg, loaded, _ = hf.load_pretrained(folder)
    # Qwen2/Llama have no MTP: the tiny_dense preset has none, so every array comes back.
    chex.assert_trees_all_equal(loaded, params)
    assert architecture(loaded_cfg) == architecture(biased)


def test_with_hf_model_takes_the_architecture_and_keeps_run_time_choices(tmp_path, tiny_with_bias):
    cfg, params, state = tiny_with_bias(False)
    folder = hf.save_pretrained(str(tmp_path / "m"), cfg, params, state)
    config = ml_collections.ConfigDict(
        dict(init_checkpoint=folder, model=preset("tiny_dense", dtype="bfloat16", scan_layers=True))
    )
    out = hf.with_hf_model(config)
    assert out.model.attention == "mla" and out.model.n_routed_experts == 8
    assert out.model.dtype == "bfloat16" and out.model.scan_layers
    assert config.model.attention == "gqa"  # the caller's config is not changed
    same = ml_collections.ConfigDict(dict(init_checkpoint="runs/x", model=preset("tiny_dense")))
    assert hf.with_hf_model(same) is same


@pytest.fixture()
def folder(tiny_with_bias, tmp_path):
    """The tiny model's folder, for a test to damage."""
    cfg, params, state = tiny_with_bias(False)
    return hf.save_pretrained(str(tmp_path / "model"), cfg, params, state)


def rewrite_tensors(folder, change):
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def test_missing_extra_and_misshapen_tensors_are_named(folder):
    def change(t):
        del t["model.layers.2.mlp.experts.3.up_proj.weight"]
        t["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
        t["model.norm.weight"] = np.zeros(7, np.float32)

    rewrite_tensors(folder, change)
    with pytest.raises(ValueError) as e:
        hf.load_pretrained(folder)
    message = str(e.value)
    assert "missing tensors ['model.layers.2.mlp.experts.3.up_proj.weight']" in message
    assert "unexpected tensors ['model.layers.0.mlp.extra.weight']" in message
    assert "model.norm.weight: stored (7,), expected (64,)" in message


def rewrite_config(folder, **fields):
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config.update(fields)
    json.dump(config, open(path, "w"))


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(architectures=["MixtralForCausalLM"]), "architectures=['MixtralForCausalLM']"),
        (dict(hidden_act="gelu"), "hidden_act='gelu' (supported: 'silu')"),
        (dict(quantization_config={"quant_method": "fp8"}), "quantization_config="),
        (dict(moe_layer_freq=2), "moe_layer_freq=2"),
        (dict(attention_bias=True), "attention_bias=True"),
        (dict(sliding_attention_layers=[1]), "unknown field(s) ['sliding_attention_layers']"),
        (dict(rope_scaling={"type": "longrope", "factor": 2.0}), "rope type 'longrope'"),
        (dict(topk_method="greedy"), "topk_method='greedy' with scoring_func='sigmoid'"),
    ],
)
def test_unsupported_configs_are_named(folder, fields, named):
    rewrite_config(folder, **fields)
    with pytest.raises(ValueError, match="config.json") as e:
        hf.model_config(folder)
    assert named in str(e.value)


def test_formats_that_cannot_hold_a_model_are_named():
    softmax = make_config("tiny", scoring_func="softmax", norm_topk_prob=True)
    with pytest.raises(ValueError, match="norm_topk_prob"):
        hf.hf_config(softmax)
    with pytest.raises(ValueError, match="rope_interleave"):
        hf.hf_config(make_config("tiny_dense", rope_interleave=True))
    with pytest.raises(ValueError, match="index_topk"):
        hf.hf_config(make_config("tiny_v32", scoring_func="softmax", norm_topk_prob=False))
    assert hf.hf_config(make_config("tiny", scoring_func="softmax", norm_topk_prob=False))[
        "architectures"
    ] == ["DeepseekV2ForCausalLM"]
    with pytest.raises(ValueError, match="n_shared_experts"):
        hf.hf_config(make_config("tiny", n_shared_experts=0))


# ----------------------------------------------------------------------------------------------
# The recipes on a Hugging Face base.


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    pytest.importorskip("transformers")
    from moe_rl import hf_cli

    return hf_cli.make_tiny(str(tmp_path_factory.mktemp("tiny_qwen2")), "qwen2")


def test_tiny_model_has_tokenizer_and_chat_template(tiny_hf):
    from moe_rl.data import tokenizers
    from moe_rl.data.tasks import format_prompt

    tok = tokenizers.get_tokenizer(tiny_hf)
    assert tok.chat_template and tok.vocab_size <= hf.model_config(tiny_hf).vocab_size
    prompt = format_prompt("chat", "What is 2 + 3?", tok.chat_template)
    assert (
        prompt.startswith("<|im_start|>user\nWhat is 2 + 3?")
        and tok.decode(tok.encode("12 + 7")) == "12 + 7"
    )


def test_r1_zero_runs_from_a_hugging_face_base(tiny_hf, tmp_path):
    import runpy

    from moe_rl.recipes import r1_zero

    config = runpy.run_path(os.path.join(ROOT, "experiments/r1_zero.py"))["get_config"]()
    config.init_checkpoint = tiny_hf
    config.grpo.update(
        num_steps=2, num_questions=2, num_generations=2, minibatch_size=4, dynamic_sampling=False
    )
    config.sampling.max_new_tokens = 12
    config.eval.update(num_questions=2, num_samples=2)
    config.eval.sampling.max_new_tokens = 12
    summary = r1_zero.run(config, str(tmp_path))
    assert "(Hugging Face)" in json.dumps(summary)
    assert os.path.exists(tmp_path / "grpo" / "checkpoints")


def test_eval_of_a_hugging_face_model_needs_its_tokenizer(tiny_hf, tmp_path):
    import runpy

    from moe_rl.recipes import eval as eval_recipe

    config = runpy.run_path(os.path.join(ROOT, "experiments/eval.py"))["get_config"]()
    config.checkpoint = tiny_hf
    with pytest.raises(ValueError, match=f"--config.tokenizer={tiny_hf}"):
        eval_recipe.run(config, str(tmp_path))


def test_distill_from_a_hugging_face_teacher_into_a_hugging_face_student(tiny_hf, tmp_path):
    """Teacher = a Qwen2 folder, student = a Llama folder (same tokenizer): no R1-Zero run and
    no student pretraining; SFT on the teacher's answers trains the student from its weights."""
    from moe_rl import hf_cli
    from moe_rl.recipes import distill
    from moe_rl.train import loop
    from tests.test_distill import tiny_distill_config

    student = hf_cli.make_tiny(str(tmp_path / "llama"), "llama", seed=1)
    config = tiny_distill_config(tmp_path, teacher_dir=tiny_hf)
    config.student.init_checkpoint = student
    config.distill.rejection = False  # a random teacher answers nothing right: keep all
    summary = distill.run(config, str(tmp_path / "work"))
    assert "(Hugging Face)" in summary["teacher"]
    assert summary["params"]["teacher"] != summary["params"]["student"]
    assert not os.path.exists(tmp_path / "work" / "student_base")  # the student was given
    rows = loop.read_metrics(str(tmp_path / "work" / "student_sft"))
    assert [r["step"] for r in rows if "loss" in r][-1] == config.student.sft.train.num_steps


def test_cli_exports_a_runs_newest_checkpoint(tmp_path, tiny):
    """`python -m moe_rl.hf_cli export` of a workdir: the same arrays, without MTP on request."""
    from moe_rl import checkpoint, hf_cli

    _, params, state = tiny
    model = {"params": params, "model_state": state}
    ckpt = checkpoint.Checkpointer(str(tmp_path / "run"), async_save=False)
    ckpt.save(7, {"step": np.int32(7), **model})
    ckpt.close()
    out = str(tmp_path / "hf")
    hf_cli.main(
        [
            "export",
            "--config",
            os.path.join(ROOT, "experiments/pretrain_moe.py"),
            "--checkpoint",
            str(tmp_path / "run"),
            "--out",
            out,
            "--no_mtp",
        ]
    )
    loaded_cfg, params, state = hf.load_pretrained(out)
    assert loaded_cfg.num_nextn_predict_layers == 0 and "mtp_1_eh_proj" not in params
    expected = {k: v for k, v in model["params"].items() if not k.startswith("mtp_")}
    chex.assert_trees_all_equal(params, expected)
    assert set(state["moe_bias"]) == {"moe_layers"}


# config.json of public checkpoints as published (architecture fields; auto_map left out).
QWEN25_05B = dict(
    architectures=["Qwen2ForCausalLM"],
    attention_dropout=0.0,
    bos_token_id=151643,
    eos_token_id=151643,
    hidden_act="silu",
    hidden_size=896,
    initializer_range=0.02,
    intermediate_size=4864,
    max_position_embeddings=32768,
    max_window_layers=24,
    model_type="qwen2",
    num_attention_heads=14,
    num_hidden_layers=24,
    num_key_value_heads=2,
    rms_norm_eps=1e-06,
    rope_theta=1000000.0,
    sliding_window=32768,
    tie_word_embeddings=True,
    torch_dtype="bfloat16",
    transformers_version="4.40.1",
    use_cache=True,
    use_sliding_window=False,
    vocab_size=151936,
)
DEEPSEEK_V2_LITE = dict(
    architectures=["DeepseekV2ForCausalLM"],
    attention_bias=False,
    attention_dropout=0.0,
    aux_loss_alpha=0.001,
    bos_token_id=100000,
    eos_token_id=100001,
    first_k_dense_replace=1,
    hidden_act="silu",
    hidden_size=2048,
    initializer_range=0.02,
    intermediate_size=10944,
    kv_lora_rank=512,
    max_position_embeddings=163840,
    model_type="deepseek_v2",
    moe_intermediate_size=1408,
    moe_layer_freq=1,
    n_group=1,
    n_routed_experts=64,
    n_shared_experts=2,
    norm_topk_prob=False,
    num_attention_heads=16,
    num_experts_per_tok=6,
    num_hidden_layers=27,
    num_key_value_heads=16,
    pretraining_tp=1,
    q_lora_rank=None,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    rms_norm_eps=1e-06,
    rope_scaling=dict(
        beta_fast=32,
        beta_slow=1,
        factor=40,
        mscale=0.707,
        mscale_all_dim=0.707,
        original_max_position_embeddings=4096,
        type="yarn",
    ),
    rope_theta=10000,
    routed_scaling_factor=1.0,
    scoring_func="softmax",
    seq_aux=True,
    tie_word_embeddings=False,
    topk_group=1,
    topk_method="greedy",
    torch_dtype="bfloat16",
    transformers_version="4.33.1",
    use_cache=True,
    v_head_dim=128,
    vocab_size=102400,
)
DEEPSEEK_V3 = dict(
    architectures=["DeepseekV3ForCausalLM"],
    attention_bias=False,
    attention_dropout=0.0,
    aux_loss_alpha=0.001,
    bos_token_id=0,
    eos_token_id=1,
    ep_size=1,
    first_k_dense_replace=3,
    hidden_act="silu",
    hidden_size=7168,
    initializer_range=0.02,
    intermediate_size=18432,
    kv_lora_rank=512,
    max_position_embeddings=163840,
    model_type="deepseek_v3",
    moe_intermediate_size=2048,
    moe_layer_freq=1,
    n_group=8,
    n_routed_experts=256,
    n_shared_experts=1,
    norm_topk_prob=True,
    num_attention_heads=128,
    num_experts_per_tok=8,
    num_hidden_layers=61,
    num_key_value_heads=128,
    num_nextn_predict_layers=1,
    q_lora_rank=1536,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    quantization_config=dict(
        activation_scheme="dynamic", fmt="e4m3", quant_method="fp8", weight_block_size=[128, 128]
    ),
    rms_norm_eps=1e-06,
    rope_scaling=dict(
        beta_fast=32,
        beta_slow=1,
        factor=40,
        mscale=1.0,
        mscale_all_dim=1.0,
        original_max_position_embeddings=4096,
        type="yarn",
    ),
    rope_theta=10000,
    routed_scaling_factor=2.5,
    scoring_func="sigmoid",
    tie_word_embeddings=False,
    topk_group=4,
    topk_method="noaux_tc",
    torch_dtype="bfloat16",
    transformers_version="4.46.3",
    use_cache=True,
    v_head_dim=128,
    vocab_size=129280,
)


def test_public_checkpoint_configs_map_to_their_architectures():
    from moe_rl.models import counting

    qwen = ModelConfig.from_config(model_config_dict(**hf.architecture_fields(QWEN25_05B)))
    assert (qwen.attention, qwen.num_key_value_heads, qwen.head_dim) == ("gqa", 2, 64)
    assert qwen.attention_bias and qwen.tie_word_embeddings and not qwen.rope_interleave
    assert 0.49e9 < counting.param_counts(qwen)["total"] < 0.50e9  # "Qwen2.5-0.5B": 494M
    lite = ModelConfig.from_config(model_config_dict(**hf.architecture_fields(DEEPSEEK_V2_LITE)))
    assert (lite.q_lora_rank, lite.scoring_func, lite.n_group, lite.norm_topk_prob) == (
        None,
        "softmax",
        1,
        False,
    )
    assert lite.rope_scaling.mscale == 0.707 and lite.rope_scaling.factor == 40
    counts = counting.param_counts(lite)
    assert 15.5e9 < counts["total"] < 16e9 and 2.3e9 < counts["activated"] < 2.8e9  # 15.7B/2.4B
    with pytest.raises(ValueError, match="quantization_config.*dequantize"):
        hf.architecture_fields(DEEPSEEK_V3)
    bf16 = {k: v for k, v in DEEPSEEK_V3.items() if k != "quantization_config"}
    v3 = ModelConfig.from_config(model_config_dict(**hf.architecture_fields(bf16)))
    assert (v3.n_group, v3.topk_group, v3.first_k_dense_replace) == (8, 4, 3)
    counts = counting.param_counts(v3)
    assert 660e9 < counts["total"] < 690e9 and 36e9 < counts["activated"] < 40e9  # 671B/37B


def test_hf_cli_tiny_without_the_hf_extra_says_how_to_install_it(monkeypatch):
    import builtins

    from moe_rl import hf_cli

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(SystemExit, match=r"needs torch, which the 'hf' extra installs"):
        hf_cli.tiny_model("qwen2", 64)
