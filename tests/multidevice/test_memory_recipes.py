"""The memory planner's GRPO and distillation stages: the per-device bytes of the policy's train
state, the reference and sampling weights, the sampler's KV cache and outputs equal those of
the arrays the recipes' code creates, on 8 fake CPU devices; the sampler's cache shapes are
those `sampling.generate` itself asks `transformer.init_cache` / `repeat_cache` for."""

import os
import runpy

import jax
import jax.numpy as jnp
import pytest

from moe_rl import evaluate, memory, sampling, sharding
from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.train import grpo_step, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Parameters and optimizer state split three ways, rollout rows over fsdp x expert (4 shards).
MESH = dict(fsdp=2, expert=2, tensor=2)


def experiment(name):
    return runpy.run_path(os.path.join(ROOT, "experiments", name))["get_config"]()


def grpo_config(**mesh):
    """experiments/r1_zero.py (the tiny MoE) at small sizes on `mesh`; the byte tokenizer, so
    that the planner measures the prompts the sampler gets (a BPE is learned at run time)."""
    config = experiment("r1_zero.py")
    config.tokenizer = "byte"
    config.grpo.update(num_questions=8, num_generations=4, minibatch_size=32)
    config.sampling.max_new_tokens = 7  # odd sizes: a fresh trace of the sampler
    config.eval.batch_size = 8
    config.eval.sampling.max_new_tokens = 5
    config.mesh.update({"data": 1, **mesh})
    return config


@pytest.fixture(scope="module")
def created_models():
    """The tiny MoE's weights (R1-Zero's policy and the distillation teacher) as a checkpoint
    loads them, on one device, and the distillation student's fresh train state: one compile."""
    config = experiment("distill.py")
    t_cfg = ModelConfig.from_config(config.teacher.model)
    s_cfg = ModelConfig.from_config(config.student.model)
    tx = train_state.make_optimizer(config.student.sft.optim, 10)
    teacher, student = jax.jit(
        lambda: (evaluate.init_model(t_cfg, 0), train_state.init(s_cfg, tx, 0))
    )()
    return t_cfg, teacher, student


def stage(result, name):
    (found,) = [s for s in result["stages"] if s["name"].endswith(name)]
    return found


def phase(s, prefix):
    (found,) = [p for n, p in s["phases"].items() if n.startswith(prefix)]
    return found


def sampler_calls(monkeypatch, cfg, ids, sp, n, record_routing):
    """The caches `sampling.generate` creates for these prompts (traced, not run): the
    (rows, slots) it passes to init_cache, the n of repeat_cache, and its outputs' shapes."""
    calls = {}
    init, repeat = transformer.init_cache, transformer.repeat_cache

    def init_cache(cfg_, batch, max_len):
        calls["init_cache"] = (batch, max_len)
        return init(cfg_, batch, max_len)

    def repeat_cache(cfg_, cache, k):
        calls["repeat"] = k
        return repeat(cfg_, cache, k)

    monkeypatch.setattr(transformer, "init_cache", init_cache)
    monkeypatch.setattr(transformer, "repeat_cache", repeat_cache)
    # A jit of its own: one with an empty trace cache, so that generate is traced again.
    fresh = lambda *args: sampling._generate(*args)
    monkeypatch.setattr(sampling, "_generate_jit", jax.jit(fresh, static_argnums=range(6)))
    tok = tokenizers.get_tokenizer("byte")
    weights = jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))
    out = jax.eval_shape(
        lambda p, s: sampling.generate(
            cfg,
            p,
            s,
            ids,
            jax.random.key(0),
            sp,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            num_samples=n,
            record_routing=record_routing,
        ),
        *weights,
    )
    monkeypatch.undo()
    calls["outputs"] = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(out))
    return calls


def created_cache_bytes(cfg, mesh, rows, slots, n):
    """Device 0's bytes of the prefill cache and of its n-fold repeat, created in the planner's
    cache shardings (rows over the batch axes)."""
    make = lambda: transformer.init_cache(cfg, rows, slots)
    prefill = jax.jit(make, out_shardings=memory.cache_shardings(cfg, jax.eval_shape(make), mesh))()
    out = [sharding.addressable_bytes(prefill)]
    if n > 1:
        rep = lambda: transformer.repeat_cache(cfg, make(), n)
        sh = memory.cache_shardings(cfg, jax.eval_shape(rep), mesh)
        out.append(sharding.addressable_bytes(jax.jit(rep, out_shardings=sh)()))
    return out


def test_grpo_plan_equals_the_created_state_weights_and_cache(created_models, monkeypatch):
    config = grpo_config(**MESH)
    config.grpo.off_policy_steps = 1
    result = memory.plan_recipe(config, 8)
    assert result["recipe"] == "r1_zero"
    grpo = stage(result, "GRPO (config.grpo)")
    held = grpo["held"]

    # The train state as r1_zero and grpo.train make it: the base's weights put in the model's
    # shardings, the state created from them in the trainer's; the reference a copy (beta > 0);
    # the one-step-off-policy state's sampling weights.
    cfg, base, _ = created_models
    assert cfg == ModelConfig.from_config(config.model)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    model_sh = sharding.model_shardings(cfg, mesh)
    params, model_state = jax.device_put((base["params"], base["model_state"]), model_sh)
    tx = train_state.make_optimizer(config.optim, config.grpo.num_steps)
    fresh = lambda p, s: train_state.create(p, s, tx, jax.random.key(config.seed))
    state_sh = sharding.state_shardings(jax.eval_shape(fresh, params, model_state), cfg, mesh)
    state = jax.jit(fresh, out_shardings=state_sh)(params, model_state)
    ref = jax.tree.map(jnp.copy, (params, model_state))
    loop_sh = grpo_step.off_policy_shardings(state_sh, model_sh)
    off = jax.device_put(grpo_step.OffPolicyState.start(state), loop_sh)
    created = {
        "policy params": sharding.addressable_bytes(state.params),
        "policy optimizer state": sharding.addressable_bytes(state.opt_state),
        "policy model state": sharding.addressable_bytes(state.model_state),
        "step and rng": sharding.addressable_bytes((state.step, state.rng)),
        "reference params + state (beta=0.04)": sharding.addressable_bytes(ref),
        "sampling weights (off_policy_steps=1)": sharding.addressable_bytes(off.sampler),
    }
    assert held == created
    assert created["policy model state"] > 0  # the routing bias

    # The rollout's sampler: the caches generate asks for with the task's first questions.
    t = config.task
    examples = task_from_config(t).examples("train", config.grpo.num_questions, seed=t.seed)
    ids = evaluate.prompts_for(tokenizers.get_tokenizer("byte"), examples, t.template, False)[1]
    sp = sampling.SamplingParams.from_config(config.sampling)
    G = config.grpo.num_generations
    calls = sampler_calls(monkeypatch, cfg, ids, sp, G, record_routing=True)
    assert calls["repeat"] == G
    rows, slots = calls["init_cache"]
    assert (rows, slots) == (8, sampling.bucket(max(map(len, ids))) + 7)
    # Off-policy: the rollout and the update are one phase.
    rollout = phase(grpo, "rollout and update at once")
    prefill, decode = created_cache_bytes(cfg, mesh, rows, slots, G)
    assert rollout[f"kv cache, prefill ({rows} rows x {slots - 7}+7 slots)"] == prefill
    assert rollout[f"kv cache, decode ({rows * G} rows)"] == decode
    shards = 4
    assert rollout["sampler outputs"] * shards == calls["outputs"]
    assert grpo["peak"] == sum(held.values()) + max(
        sum(p.values()) for p in grpo["phases"].values()
    )

    # The held-out evaluation: eval.batch_size prompts, one sample each.
    esp = sampling.SamplingParams.from_config(config.eval.sampling, "eval.sampling")
    calls = sampler_calls(monkeypatch, cfg, ids, esp, 1, record_routing=False)
    assert "repeat" not in calls
    evaluation = phase(grpo, "held-out evaluation")
    (planned,) = [v for k, v in evaluation.items() if k.startswith("kv cache")]
    assert [planned] == created_cache_bytes(cfg, mesh, *calls["init_cache"], 1)
    assert evaluation["sampler outputs"] * shards == calls["outputs"]


def test_grpo_phases_follow_the_config():
    config = grpo_config(data=8)
    config.grpo.beta = 0.0  # no reference: no reference row, no reference forward
    config.init_checkpoint = "runs/somewhere"  # a given base: no pretraining stage
    result = memory.plan_recipe(config, 8, prompt_len=100)
    (grpo,) = result["stages"]
    assert not any(k.startswith("reference") for k in grpo["held"])
    assert not any(k.startswith("reference") for k in grpo["phases"])
    assert [k.split(" (")[0] for k in grpo["phases"]] == [
        "rollout",
        "update",
        "held-out evaluation",
    ]
    assert grpo["note"].startswith("prompts of up to 100 tokens, bucket 128")
    assert result["peak"] == grpo["peak"]
    config.grpo.old_logprobs = "recompute"  # pi_old's forward over the whole rollout
    (grpo,) = memory.plan_recipe(config, 8, prompt_len=100)["stages"]
    assert any(k.startswith("reference / pi_old forward") for k in grpo["phases"])


def test_distill_plan_equals_the_created_teacher_and_student(created_models, monkeypatch):
    config = experiment("distill.py")
    config.teacher.tokenizer = "byte"
    config.eval.batch_size = 8
    config.distill.sampling.max_new_tokens = 11
    config.teacher.init_checkpoint = "runs/teacher_base"  # no base pretraining stage
    result = memory.plan_recipe(config, 1)
    names = [s["name"] for s in result["stages"]]
    assert names == [
        "teacher: GRPO (config.grpo)",
        "teacher's rejection sampling (config.distill)",
        "student pretraining (config.student.pretrain)",
        "student sft (config.student.sft)",
    ]
    assert result["peak"] == max(s["peak"] for s in result["stages"])
    # The teacher as the recipe loads it (one device), kept alive through the student's stages.
    t_cfg, teacher, student = created_models
    teacher = sharding.addressable_bytes(teacher)
    sampling_stage = stage(result, "teacher's rejection sampling (config.distill)")
    assert sampling_stage["held"] == {"teacher params + state": teacher}
    sft = stage(result, "student sft (config.student.sft)")
    assert sft["held"] == {
        "teacher params + state (kept by the recipe)": teacher,
        "params": sharding.addressable_bytes(student.params),
        "optimizer state": sharding.addressable_bytes(student.opt_state),
        "model state": 0,
        "step and rng": sharding.addressable_bytes((student.step, student.rng)),
    }
    # The rejection sampling: eval.batch_size prompts of the distillation's questions.
    t, d = config.teacher.task, config.distill
    examples = task_from_config(t).examples("train", config.eval.batch_size, seed=d.question_seed)
    ids = evaluate.prompts_for(tokenizers.get_tokenizer("byte"), examples, t.template, False)[1]
    sp = sampling.SamplingParams.from_config(d.sampling)
    calls = sampler_calls(monkeypatch, t_cfg, ids, sp, 1, record_routing=False)
    one = memory.make_plan_mesh(None, 1)
    (items,) = sampling_stage["phases"].values()
    (planned,) = [v for k, v in items.items() if k.startswith("kv cache")]
    assert [planned] == created_cache_bytes(t_cfg, one, *calls["init_cache"], 1)
    assert items["sampler outputs"] == calls["outputs"]

    # logit_kd adds the teacher's forward; gkd also the student's own sampling.
    config.distill.mode = "gkd"
    gkd = stage(memory.plan_recipe(config, 1, prompt_len=100), "student gkd (config.student.sft)")
    (items,) = gkd["phases"].values()
    assert "teacher forward (est.)" in items
    assert any(k.startswith("student sampling: kv cache") for k in items)


@pytest.mark.parametrize("name", ["r1_zero.py", "r1_zero_countdown.py", "r1.py", "distill.py"])
def test_every_recipe_experiment_plans_and_prints(name):
    config = experiment(name)
    measured = name == "r1_zero.py"  # the others with a given prompt length: faster
    result = memory.plan_recipe(config, 1, prompt_len=None if measured else 120)
    text = memory.format_recipe(result)
    assert text.startswith(f"recipe {config.recipe}:")
    if measured:  # its BPE is learned at run time: the bytes bound the prompt
        assert "byte-tokenizer upper bound" in text
    assert result["peak"] > 0


def test_a_pretraining_config_is_one_stage_of_plan():
    config = experiment("pretrain_moe.py")
    config.mesh.data = 1  # one device
    (one,) = memory.plan_recipe(config, 1)["stages"]
    per_device = memory.plan(config, 1)["per_device"]
    assert one["held"]["params"] == per_device["params"]
    (step,) = one["phases"].values()
    assert step["activations (est.)"] == per_device["activations (est.)"]


def test_unknown_recipe_names_the_key_and_the_allowed_values():
    config = experiment("eval.py")
    with pytest.raises(ValueError, match=r"config.recipe='eval' has no memory plan; allowed: "):
        memory.plan_recipe(config, 1)
