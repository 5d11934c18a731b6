"""Sharded forward, train step, GRPO step and sampling on 8 fake CPU devices equal the
single-device results; expert parallelism holds 1/EP of the experts per device."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from moe_rl import sampling, sharding
from moe_rl.models import transformer
from moe_rl.recipes import pretrain
from moe_rl.train import configs, grpo_step, lm, rollout, train_state
from tests.utils import make_config, tiny_pretrain_config

MESHES = {
    "data8": dict(data=8),
    "data2_expert4": dict(data=2, expert=4),
    "fsdp2_expert2_tensor2": dict(fsdp=2, expert=2, tensor=2),
}
B, L = 8, 16


@pytest.fixture(scope="module")
def model():
    cfg = make_config("tiny")
    params, state = transformer.init(cfg, jax.random.key(0))
    # A non-zero routing bias, so that the bias is exercised (and sharded) too.
    state = jax.tree.map(lambda b: jax.random.normal(jax.random.key(3), b.shape) * 0.1, state)
    tokens = jax.random.randint(jax.random.key(1), (B, L), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    return cfg, params, state, tokens, positions


def on_mesh(mesh, cfg, params, state, tokens, positions):
    """The model and batch placed with the default rules on `mesh`."""
    p_sh, s_sh = sharding.model_shardings(cfg, mesh)
    rows = sharding.batch_sharding(mesh)
    return (
        jax.device_put(params, p_sh),
        jax.device_put(state, s_sh),
        jax.device_put(tokens, rows),
        jax.device_put(positions, rows),
    )


def batch_of(tokens, positions):
    seg = jnp.ones_like(tokens)
    mask = jnp.broadcast_to(jnp.arange(L) >= 4, tokens.shape).astype(jnp.int32)
    return {"tokens": tokens, "positions": positions, "segment_ids": seg, "loss_mask": mask}


@pytest.fixture(scope="module")
def reference(model):
    """Single-device results: logits, and the state and metrics after each of two steps."""
    cfg, params, state, tokens, positions = model
    logits = jax.jit(lambda p, s, t, pos: transformer.forward(cfg, p, s, t, pos)[0])(
        params, state, tokens, positions
    )
    tx = train_state.make_optimizer(configs.optim(warmup_steps=0), 10)
    step = lm.make_train_step(cfg, lm.LossConfig(), tx, 1e-3)
    batch = {k: v[None] for k, v in batch_of(tokens, positions).items()}  # [accum=1, B, L]
    st, steps = train_state.init(cfg, tx, 0), []
    ref_step = jax.jit(step)
    for _ in range(2):
        st, m = ref_step(st, batch)
        steps.append((st, m))
    return logits, tx, step, batch, steps


@pytest.mark.parametrize("name", list(MESHES))
def test_forward_logits_equal_single_device(model, reference, name):
    cfg, params, state, tokens, positions = model
    mesh = sharding.make_mesh(MESHES[name])
    with jax.set_mesh(mesh):
        p, s, t, pos = on_mesh(mesh, cfg, params, state, tokens, positions)
        logits = jax.jit(lambda p, s, t, pos: transformer.forward(cfg, p, s, t, pos)[0])(
            p, s, t, pos
        )
    chex.assert_trees_all_close(logits, reference[0], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", list(MESHES))
def test_train_steps_equal_single_device_and_compile_once(model, reference, name):
    """Two optimizer steps (loss, gradient norm, AdamW update, bias update) give the
    single-device state; the step compiles once."""
    cfg = model[0]
    _, tx, step, batch, ref_steps = reference
    mesh = sharding.make_mesh(MESHES[name])
    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(lambda: train_state.init(cfg, tx, 0))
        state_sh = sharding.state_shardings(abstract, cfg, mesh)
        state = jax.jit(lambda: train_state.init(cfg, tx, 0), out_shardings=state_sh)()
        batch_sh = sharding.batch_sharding(mesh, 1)
        traces = []  # a Python side effect runs once per trace (and compile)
        sharded_step = jax.jit(
            lambda s, b: (traces.append(1), step(s, b))[1],
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, None),
        )
        for ref, ref_m in ref_steps:
            state, m = sharded_step(state, sharding.put_batch(batch, batch_sh))
            chex.assert_trees_all_close(m["loss"], ref_m["loss"], atol=1e-5, rtol=1e-5)
            chex.assert_trees_all_close(m["grad_norm"], ref_m["grad_norm"], rtol=1e-4)
            chex.assert_trees_all_close(state.params, ref.params, atol=5e-5, rtol=1e-4)
            chex.assert_trees_all_close(state.model_state, ref.model_state, atol=1e-6)
        assert len(traces) == 1
        # The state keeps its shardings: the experts stay split over 'expert'.
        assert all(
            a.sharding.is_equivalent_to(sh, a.ndim)
            for a, sh in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh), strict=True)
        )


@pytest.mark.parametrize("ep", [2, 4, 8])
def test_each_device_holds_one_over_ep_of_the_routed_experts(model, ep):
    cfg, params, state, tokens, positions = model
    mesh = sharding.make_mesh(dict(data=8 // ep, expert=ep))
    p, *_ = on_mesh(mesh, cfg, params, state, tokens, positions)
    experts = [
        (kp, leaf)
        for kp, leaf in jax.tree_util.tree_flatten_with_path(p)[0]
        if "experts_" in jax.tree_util.keystr(kp)
    ]
    assert experts
    for kp, leaf in experts:
        E = cfg.n_routed_experts
        for shard in leaf.addressable_shards:
            assert shard.data.shape[0] == E // ep, jax.tree_util.keystr(kp)
        # Each expert lives on exactly 8 / ep devices (the data replicas of its shard).
        owners = [s.index[0].start for s in leaf.addressable_shards]
        assert sorted(set(owners)) == list(range(0, E, E // ep))


def test_sampling_and_grpo_update_run_on_a_mesh(model):
    """The KV-cached sampler (decode rows not divisible by the token shards fall back to
    replicated tokens) and a GRPO update compile and match one device."""
    from moe_rl.train import grpo_loss

    cfg, params, state, _, _ = model
    prompts = [[1, 5, 6, 7], [1, 9, 9], [1, 4], [1, 3, 3, 3, 3]] * 2
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=6)
    key = jax.random.key(5)
    gen = lambda p, s: sampling.generate(cfg, p, s, prompts, key, sp, eos_id=2, pad_id=0)
    ref = gen(params, state)
    mesh = sharding.make_mesh(dict(data=2, expert=4))
    with jax.set_mesh(mesh):
        p_sh, s_sh = sharding.model_shardings(cfg, mesh, sharding.SAMPLING_RULES)
        out = gen(jax.device_put(params, p_sh), jax.device_put(state, s_sh))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    chex.assert_trees_all_close(out.logprobs, ref.logprobs, atol=1e-4)

    # One GRPO update on packed groups: Q=8 questions x G=2 completions of N=6 tokens.
    Q, G, N = 8, 2, 6
    prompt = np.asarray(jax.random.randint(key, (Q, 4), 3, cfg.vocab_size))
    comp = np.asarray(jax.random.randint(jax.random.key(6), (Q, G, N), 3, cfg.vocab_size))
    tokens, seg, pos = rollout.pack_groups(prompt, np.full(Q, 4), comp)
    mb = dict(
        tokens=tokens,
        segment_ids=seg,
        positions=pos,
        mask=np.ones((Q, G, N), np.float32),
        old_logp=np.full((Q, G, N), -5.0, np.float32),
        advantages=np.asarray(jax.random.normal(key, (Q, G))),
    )
    tx = train_state.make_optimizer(configs.optim(warmup_steps=0), 10)
    lc = grpo_loss.LossConfig(beta=0.0)
    update = grpo_step.make_update(cfg, lc, tx, 1.0, 0.0)
    ref_state, ref_m = update(train_state.init(cfg, tx, 0), mb, 4, G)
    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(lambda: train_state.init(cfg, tx, 0))
        state_sh = sharding.state_shardings(abstract, cfg, mesh)
        st = jax.jit(lambda: train_state.init(cfg, tx, 0), out_shardings=state_sh)()
        rows = NamedSharding(mesh, P(sharding.batch_axes(mesh)))
        new, m = update(st, jax.device_put(mb, rows), 4, G)
    chex.assert_trees_all_close(m["loss"], ref_m["loss"], atol=1e-5)
    chex.assert_trees_all_close(new.params, ref_state.params, atol=5e-5, rtol=1e-4)


def test_mesh_errors_name_the_key():
    with pytest.raises(ValueError, match="needs 16 devices; there are 8"):
        sharding.make_mesh(dict(data=4, expert=4))
    assert sharding.make_mesh(dict(data=2, expert=3)).size == 6  # the first 6 devices
    with pytest.raises(ValueError, match="not divisible by the fixed axes' product 3"):
        sharding.make_mesh(dict(data=-1, expert=3))
    with pytest.raises(ValueError, match="unknown axes"):
        sharding.make_mesh(dict(pipeline=8))
    cfg = make_config("tiny")
    tx = train_state.make_optimizer(configs.optim(), 10)
    abstract = jax.eval_shape(lambda: train_state.init(cfg, tx, 0))
    # The tiny model has 4 heads: they do not split 8 ways.
    with pytest.raises(
        ValueError, match=r"attn.* dimension 1 \(4\) is not divisible by config.mesh.tensor=8"
    ):
        sharding.state_shardings(abstract, cfg, sharding.make_mesh(dict(tensor=8)))


def test_auto_moe_impl_reads_the_expert_axis_of_the_mesh_set():
    """'auto' resolved inside jax.set_mesh: a GPU run with mesh.expert > 1 dispatches with
    'sparse' (ragged_dot has no expert-parallel form), without one with 'ragged'."""
    from moe_rl.models.config import ModelConfig, preset

    with jax.set_mesh(sharding.make_mesh(MESHES["data2_expert4"])):
        assert ModelConfig.from_config(preset("tiny"), backend="gpu").moe_impl == "sparse"
    with jax.set_mesh(sharding.make_mesh(MESHES["data8"])):
        assert ModelConfig.from_config(preset("tiny"), backend="gpu").moe_impl == "ragged"


def test_pretraining_recipe_with_expert_parallelism_trains_like_one_device(tmp_path):
    """`--config.mesh.expert=4` (the rest data parallel) gives the single-device losses, and a
    run stopped after 2 steps resumes on the mesh from its sharded checkpoint."""
    from moe_rl.train import loop

    losses = lambda wd: [r["loss"] for r in loop.read_metrics(str(wd)) if "loss" in r]
    pretrain.run(tiny_pretrain_config(3, data=1), str(tmp_path / "one"))  # one device: no mesh
    pretrain.run(tiny_pretrain_config(2, data=-1, expert=4), str(tmp_path / "ep"))
    pretrain.run(
        tiny_pretrain_config(3, data=-1, expert=4), str(tmp_path / "ep")
    )  # resumes at step 2
    np.testing.assert_allclose(losses(tmp_path / "ep"), losses(tmp_path / "one"), rtol=2e-5)
    with pytest.raises(ValueError, match="config.train.batch_size/grad_accum=6 rows"):
        config = tiny_pretrain_config(1, data=-1, expert=4)
        config.train.batch_size = 6
        pretrain.run(config, str(tmp_path / "bad"))


REPLAY = {  # issue 18's sampler/trainer alignment, all at once
    "grpo.routing_replay": True,
    "grpo.keep_sampling_mask": True,
    "grpo.old_logprobs": "recompute",
    "grpo.is_correction": "token_truncate",
    "sampling.top_k": 20,
}
OFF_POLICY = {  # one-step-off-policy rollouts, the staleness weighed by TIS
    "grpo.off_policy_steps": 1,
    "grpo.old_logprobs": "recompute",
    "grpo.is_correction": "token_truncate",
}


@pytest.mark.parametrize("extra", [{}, REPLAY, OFF_POLICY], ids=["default", "replay", "off_policy"])
def test_grpo_recipe_on_a_mesh_trains_like_one_device(tmp_path, extra):
    """`experiments/r1_zero.py` with --config.mesh.expert=4: the same rewards, losses and
    final policy as on one device (the rollouts are sampled from the split policy); also with
    routing replay, the kept sampling mask and TIS against a recomputed pi_old, and with
    one-step-off-policy rollouts (sampled in a thread from the split sampling weights)."""
    import os
    import runpy

    from moe_rl import checkpoint, evaluate
    from moe_rl.models.config import ModelConfig
    from moe_rl.recipes import r1_zero
    from moe_rl.train import loop

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def config(**mesh):
        c = runpy.run_path(os.path.join(root, "experiments/r1_zero.py"))["get_config"]()
        c.update_from_flattened_dict(
            {
                "init_checkpoint": str(tmp_path / "base"),
                "grpo.num_steps": 2,
                "grpo.dynamic_sampling": False,  # a random policy: refills would only cost time
                "grpo.num_questions": 8,
                "grpo.num_generations": 2,
                "grpo.minibatch_size": 16,
                "sampling.max_new_tokens": 6,
                "eval.num_questions": 2,
                "eval.num_samples": 2,
                "eval.batch_size": 4,
                "eval.sampling.max_new_tokens": 6,
                **{f"mesh.{k}": v for k, v in mesh.items()},
                **extra,
            }
        )
        return c

    cfg = ModelConfig.from_config(config().model)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "base"), async_save=False)
    ckpt.save(1, {"step": np.int32(1), **evaluate.init_model(cfg, 0)})
    ckpt.close()
    one = r1_zero.run(config(data=1), str(tmp_path / "one"))
    ep = r1_zero.run(config(data=-1, expert=4), str(tmp_path / "ep"))
    rows = lambda wd: [r for r in loop.read_metrics(str(wd)) if "reward" in r]
    for a, b in zip(rows(tmp_path / "ep"), rows(tmp_path / "one"), strict=True):
        np.testing.assert_allclose(a["reward"], b["reward"], rtol=1e-6)
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)
        if extra is REPLAY:  # the sampler's routing and log-probs agree with the trainer's
            assert a["routing_mismatch"] == 0 and a["mismatch_max"] < 1e-4
        if extra is OFF_POLICY:
            assert a["policy_lag"] == b["policy_lag"] == min(a["step"] - 1, 1)
    assert ep["after"]["pass@1"] == one["after"]["pass@1"]
    if extra:
        return
    with pytest.raises(ValueError, match="config.grpo.num_questions=4 rows"):
        c = config(data=-1, expert=4)
        c.grpo.update(num_questions=4, minibatch_size=8)
        r1_zero.run(c, str(tmp_path / "bad"))


@pytest.mark.parametrize("name", ["data2_expert4", "fsdp2_expert2_tensor2"])
def test_hugging_face_weights_load_into_their_shardings(model, tmp_path, monkeypatch, name):
    """A Hugging Face folder loads straight into the mesh's shardings, equal to the arrays
    written; each device reads only the experts of its shard."""
    from moe_rl import hf

    cfg, params, state, *_ = model
    folder = hf.save_pretrained(str(tmp_path), cfg, params, state)
    mesh = sharding.make_mesh(MESHES[name])
    shardings = sharding.model_shardings(cfg, mesh)
    read = []
    get = hf._Reader.get
    monkeypatch.setattr(hf._Reader, "get", lambda self, key: read.append(key) or get(self, key))
    loaded, loaded_state = hf.load_params(folder, cfg, shardings)
    chex.assert_trees_all_equal(loaded, params)
    chex.assert_trees_all_equal(loaded_state, state)
    for leaf, sh in zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings[0]), strict=True):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
    # Every expert tensor is read once per device that holds it: 8 / EP devices, not all 8.
    ep = MESHES[name]["expert"]
    expert_reads = [k for k in read if k.startswith("model.layers.1.mlp.experts.0.up_proj")]
    assert len(expert_reads) == 8 // ep
