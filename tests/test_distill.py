"""Distillation (train/distill.py, recipes/distill.py): what rejection sampling keeps, what is
written, what is reused."""

import json
import os
import runpy

import jax
import numpy as np
import pytest

from moe_rl import checkpoint, evaluate, sampling
from moe_rl.data import tokenizers
from moe_rl.data.tasks import get_task
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import distill as distill_recipe
from moe_rl.recipes import distill_vs_rl
from moe_rl.train import (
    configs,
    distill,
    distill_data,
    distill_loss,
    gkd,
    lm,
    loop,
    train_state,
)
from tests.utils import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASK = get_task("arithmetic", num_digits=1)
EXAMPLES = TASK.examples("train", 2, seed=0)
K = 4


def responses(ex):
    """Four answers to one question: right, right again (a duplicate), wrong, unformatted."""
    right = f" <think> I add. </think> <answer> {ex.answer} </answer>"
    wrong = f" <think> I guess. </think> <answer> {int(ex.answer) + 1} </answer>"
    return [right, right, wrong, f"{ex.answer}"]


def fake_sampler(calls):
    def sample_answers(cfg, params, model_state, tokenizer, ids, k, sp, batch_size, key):
        calls.append(len(ids))
        assert k == K and len(ids) == len(EXAMPLES)
        texts = [t for ex in EXAMPLES for t in responses(ex)]
        lengths = np.array([len(t) for t in texts], np.int32)
        return texts, lengths, np.zeros(len(texts), bool), 0.5

    return sample_answers


def make(path, **kw):
    args = dict(
        k=K,
        sp=sampling.SamplingParams(temperature=1.0, max_new_tokens=8),
        template="r1_zero",
        think_opened=False,
        batch_size=4,
        key=jax.random.key(0),
    )
    args.update(kw)
    return distill.teacher_dataset(
        path, None, None, None, tokenizers.ByteTokenizer(), TASK, EXAMPLES, **args
    )


def test_rejection_sampling_keeps_exactly_the_verified_answers(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "sample_answers", fake_sampler(calls))
    path = str(tmp_path / "data" / "train.jsonl")
    rows, stats = make(path)
    assert [r["completion"] for r in rows] == [responses(ex)[0] for ex in EXAMPLES]
    assert [r["reference"] for r in rows] == [ex.answer for ex in EXAMPLES]
    assert all(r["prompt"].endswith(f"User: {r['question']}. Assistant:") for r in rows)
    assert (stats["sampled"], stats["verified"], stats["duplicates"], stats["kept"]) == (8, 4, 2, 2)
    assert stats["acceptance_rate"] == 0.5 and stats["questions_with_answer"] == 2
    # The file is what the SFT recipe reads, and a second call reuses it without sampling.
    assert lm.read_pairs(path) == [(r["prompt"], r["completion"]) for r in rows]
    assert make(path)[0] == rows and calls == [2]
    # Different sampling settings make it again.
    make(path, k=K, sp=sampling.SamplingParams(temperature=0.5, max_new_tokens=8))
    assert calls == [2, 2]
    # So does another teacher.
    make(path, teacher="runs/other/grpo step 5")
    assert calls == [2, 2, 2]
    assert distill_data.read_jsonl(path) == rows


def test_teacher_dataset_runs_the_real_sampler(tmp_path):
    cfg = make_config("tiny")
    model = evaluate.init_model(cfg, 0)
    rows, stats = distill.teacher_dataset(
        str(tmp_path / "t.jsonl"),
        cfg,
        model["params"],
        model["model_state"],
        tokenizers.ByteTokenizer(),
        TASK,
        EXAMPLES,
        k=2,
        sp=sampling.SamplingParams(temperature=1.0, max_new_tokens=6),
        template="r1_zero",
        think_opened=False,
        batch_size=4,
        key=jax.random.key(0),
    )
    # A random model writes no verified answer: everything sampled is rejected.
    assert stats["sampled"] == 4 and rows == [] and stats["generated_tokens"] > 0


@pytest.mark.parametrize("think_opened", [False, True])
def test_verify_checks_answer_and_format(think_opened):
    ex = EXAMPLES[0]
    prefix = "" if think_opened else " <think>"
    texts = [
        f"{prefix} ok </think> <answer> {ex.answer} </answer>",
        f"{prefix} ok </think> <answer> x{ex.answer} </answer>",
    ]
    correct, formatted = distill.verify(TASK, [ex], texts, 2, think_opened)
    assert correct == [[True, False]] and formatted == [[True, True]]


def tiny_distill_config(tmp_path, experiment="distill.py", teacher_dir=None):
    """The experiment's config with seconds-long stages and a freshly initialised teacher
    (or the teacher folder given)."""
    config = runpy.run_path(os.path.join(ROOT, "experiments", experiment))["get_config"]()
    if teacher_dir is None:
        teacher_dir = tmp_path / "teacher"
        cfg = ModelConfig.from_config(config.teacher.model)
        ckpt = checkpoint.Checkpointer(str(teacher_dir / "grpo"), async_save=False)
        ckpt.save(1, {"step": np.int32(1), **evaluate.init_model(cfg, 0)})
        ckpt.close()
    config.update_from_flattened_dict(
        {
            "teacher_workdir": str(teacher_dir),
            "distill.num_questions": 6,
            "distill.samples_per_question": 2,
            "distill.sampling.max_new_tokens": 6,
            "student.pretrain.train.num_steps": 2,
            "student.pretrain.train.batch_size": 2,
            "student.pretrain.train.seq_len": 64,
            "student.pretrain.data.num_documents": 200,
            "student.pretrain.data.num_validation": 20,
            "student.sft.train.num_steps": 2,
            "student.sft.train.batch_size": 2,
            "student.sft.train.seq_len": 64,
            "eval.num_questions": 2,
            "eval.num_samples": 2,
            "eval.batch_size": 4,
            "eval.sampling.max_new_tokens": 6,
        }
    )
    return config


def accept_everything(monkeypatch):
    """A random teacher writes no verified answer: accept everything to exercise the pipeline."""
    monkeypatch.setattr(
        distill, "verify", lambda task, ex, texts, k, opened: ([[True] * k] * len(ex),) * 2
    )


def test_distill_recipe_end_to_end(tmp_path, monkeypatch):
    """A teacher checkpoint -> its (here: all accepted) answers -> student pretraining + SFT ->
    the table. Seconds-long: every stage is a few steps of the tiny models."""
    config = tiny_distill_config(tmp_path)
    accept_everything(monkeypatch)
    work = str(tmp_path / "work")
    summary = distill_recipe.run(config, work)
    assert summary["data"]["kept"] >= 6 and summary["data"]["sampled"] == 12
    for name in ("teacher", "student base", "student"):
        assert 0.0 <= summary["results"][name]["pass@1"] <= 1.0
        assert f"| {name} |" in summary["table"]
    row = distill_recipe.seed_row(summary)  # --seeds' row of this run
    assert row["student pass@1"] == summary["results"]["student"]["pass@1"]
    assert row["answers kept"] == summary["data"]["kept"]
    assert os.path.exists(os.path.join(work, "student_sft", "summary.json"))
    with pytest.raises(ValueError, match="config.distill.validation_fraction=1.0"):
        config.distill.validation_fraction = 1.0
        distill_recipe.run(config, work)
    config.distill.validation_fraction = 0.05
    with pytest.raises(ValueError, match="config.distill.lmbda=1.5"):
        config.distill.lmbda = 1.5
        distill_recipe.run(config, work)
    config.distill.lmbda = 0.5
    with pytest.raises(ValueError, match="mode='bogus'"):
        config.distill.mode = "bogus"
        distill_recipe.run(config, work)
    # GKD: every batch written by the student (lmbda=1), the JSD to the teacher on it.
    config.distill.update(mode="gkd", lmbda=1.0)
    config.distill.student_sampling.max_new_tokens = 5
    gkd = distill_recipe.run(config, work)
    rows = [r for r in loop.read_metrics(os.path.join(work, "student_gkd")) if "jsd" in r]
    assert [r["on_policy"] for r in rows] == [1.0, 1.0]
    assert all(np.isfinite(r["jsd"]) and 1 <= r["completion_length"] <= 5 for r in rows)
    assert gkd["results"]["student"]["pass@1"] >= 0.0
    config.distill.update(mode="sft", lmbda=0.5)
    # Logit KD reuses the teacher's data; the KD loss trains the student from its base again.
    config.distill.mode = "logit_kd"
    config.student.sft.train.num_steps = 3
    kd = distill_recipe.run(config, str(tmp_path / "kd"))
    metrics = lm_metrics(str(tmp_path / "kd" / "student_logit_kd"))
    assert "kl" in metrics[-1] and np.isfinite(metrics[-1]["kl"]) and kd["results"]["student"]
    config.student.model.vocab_size = 300
    with pytest.raises(ValueError, match="needs one tokenizer"):
        distill_recipe.run(config, str(tmp_path / "kd"))


def test_distill_vs_rl_trains_the_same_student_both_ways(tmp_path, monkeypatch):
    config = tiny_distill_config(tmp_path, "distill_vs_rl.py")
    config.update_from_flattened_dict(
        {
            "student_rl.grpo.num_steps": 2,
            "teacher.grpo.num_questions": 2,
            "teacher.grpo.num_generations": 2,
            "teacher.grpo.minibatch_size": 4,
            "teacher.sampling.max_new_tokens": 6,
        }
    )
    accept_everything(monkeypatch)
    work = str(tmp_path / "work")
    out = distill_vs_rl.run(config, work)
    assert {"distilled", "grpo", "student_base"} <= set(out)
    assert out["compute"]["distill_sft_flops"] > 0 and out["compute"]["grpo_flops"] > 0
    assert "(a) distilled" in out["table"] and "(b) GRPO (2 steps)" in out["table"]
    # The student trained with GRPO starts from the same base as the distilled one.
    with open(os.path.join(work, "student_grpo", "summary.json")) as f:
        assert json.load(f)["base"].startswith(os.path.join(work, "student_base"))
    config.distill.mode = "gkd"
    with pytest.raises(ValueError, match="config.distill.mode='gkd'; allowed here: 'sft'"):
        distill_vs_rl.run(config, work)


def test_distill_vs_rl_checks_the_student_grpo_settings_before_anything_runs(tmp_path):
    config = runpy.run_path(os.path.join(ROOT, "experiments", "distill_vs_rl.py"))["get_config"]()
    config.student_rl.grpo.num_generations = 1
    with pytest.raises(ValueError, match="config.grpo.num_generations=1"):
        distill_vs_rl.run(config, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_pair_rows_masks_exactly_the_completion_tokens():
    arrays = gkd.pair_rows([[1, 5, 6], [1, 7]], [[8, 9, 2], [3]], seq_len=6, pad_id=0)
    np.testing.assert_array_equal(arrays["tokens"], [[1, 5, 6, 8, 9, 2], [1, 7, 3, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["loss_mask"], [[0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["segment_ids"], [[1] * 6, [1, 1, 1, 0, 0, 0]])
    # Cut at seq_len: the prompt stays, the completion's tail goes.
    cut = gkd.pair_rows([[1, 5, 6]], [[8, 9, 2, 4]], seq_len=5, pad_id=0)
    np.testing.assert_array_equal(cut["loss_mask"], [[0, 0, 0, 1, 1]])
    # Through the KD loss's mask: the targets are the completion tokens only.
    mask = lm.target_mask(arrays["segment_ids"], arrays["loss_mask"], 1)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]])


def test_gkd_batches_are_deterministic_by_step_and_mix_on_policy_at_rate_lambda():
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    a = gkd.GKDBatches(rows, 4, 0.3, seed=0)
    first = [next(a) for _ in range(200)]
    assert 0.2 < np.mean([b["on_policy"] for b in first]) < 0.4
    assert all(len({r["prompt"] for r in b["rows"]}) == 4 for b in first)  # no repeats
    b = gkd.GKDBatches(rows, 4, 0.3, seed=0)
    b.set_state({"step": 150})
    assert next(b) == first[150]
    never, always = gkd.GKDBatches(rows, 4, 0.0, 0), gkd.GKDBatches(rows, 4, 1.0, 0)
    assert not any(next(never)["on_policy"] for _ in range(20))
    assert all(next(always)["on_policy"] for _ in range(20))


def test_gkd_step_trains_on_the_tokens_the_student_sampled(monkeypatch):
    """On-policy: the batch holds the sampled ids (not a re-encoding of their text), masked
    from the first completion token through the sample's length; off-policy: the teacher's."""
    tok = tokenizers.ByteTokenizer()
    seen = []
    sampled = np.array([[300 % 256, 65, tok.eos_id, tok.pad_id]], np.int32)

    def fake_generate(cfg, params, state, prompts, key, sp, *, eos_id, pad_id, num_samples=1):
        return sampling.Samples(sampled, np.zeros(sampled.shape, np.float32), np.array([3]))

    monkeypatch.setattr(sampling, "generate", fake_generate)
    step = gkd.make_gkd_step(
        lambda state, batch: (seen.append(batch) or state, {"loss": 0.0}),
        None,
        tok,
        sampling.SamplingParams(max_new_tokens=4),
        seq_len=32,
        seed=0,
    )
    row = {"prompt": "1+1=", "completion": " 2"}
    fake_state = type("S", (), {"params": None, "model_state": None})()
    _, m = step(fake_state, {"rows": [row], "on_policy": True, "index": 1})
    prompt = tok.encode("1+1=", add_bos=tok.bos_id is not None)
    n = len(prompt)
    np.testing.assert_array_equal(seen[0]["tokens"][0, 0, n : n + 3], sampled[0, :3])
    assert seen[0]["loss_mask"][0, 0].tolist() == [0] * n + [1, 1, 1] + [0] * (32 - n - 3)
    assert m["on_policy"] == 1.0 and m["completion_length"] == 3
    step(fake_state, {"rows": [row], "on_policy": False, "index": 2})
    teacher = tok.encode(" 2", add_eos=True)
    np.testing.assert_array_equal(seen[1]["tokens"][0, 0, n : n + len(teacher)], teacher)


def lm_metrics(workdir):
    return [r for r in loop.read_metrics(workdir) if "kl" in r]


@pytest.mark.parametrize("mode,metric", [("logit_kd", "kl"), ("gkd", "jsd")])
def test_kd_loss_decreases_on_a_fixed_batch(mode, metric):
    """A few steps of the KD step on one batch lower the divergence to a random teacher."""
    teacher_cfg = make_config("tiny", vocab_size=64)
    student_cfg = make_config("tiny_dense", vocab_size=64)
    teacher = evaluate.init_model(teacher_cfg, 1)
    c = distill_loss.DistillLossConfig(mode=mode, temperature=2.0)
    loss_fn = gkd.kd_loss_fn(teacher_cfg, teacher["params"], teacher["model_state"], c)
    tx = train_state.make_optimizer(configs.optim(learning_rate=3e-3, warmup_steps=0), 20)
    step = jax.jit(lm.make_train_step(student_cfg, None, tx, 0.0, loss_fn))
    state = train_state.init(student_cfg, tx, 0)
    tokens = jax.random.randint(jax.random.key(2), (1, 2, 16), 3, 64)
    batch = {
        "tokens": tokens,
        "segment_ids": np.ones((1, 2, 16), np.int32),
        "positions": np.broadcast_to(np.arange(16), (1, 2, 16)).astype(np.int32),
        "loss_mask": np.broadcast_to(np.arange(16) >= 6, (1, 2, 16)).astype(np.int32),
    }
    kls = []
    for _ in range(8):
        state, m = step(state, batch)
        kls.append(float(m[metric]))
    assert kls[-1] < 0.7 * kls[0], kls


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("eval.batch_size", 0, r"eval\.batch_size=0"),
        ("eval.extract", "tagz", r"eval\.extract='tagz'"),
        ("student.pretrain.train.batch_size", 0, r"student\.pretrain\.train\.batch_size=0"),
        ("student.sft.optim.learning_rate", -1.0, r"student\.sft\.optim\.learning_rate=-1"),
    ],
)
def test_distill_blocks_fail_before_anything_runs(tmp_path, key, value, message):
    config = runpy.run_path(os.path.join(ROOT, "experiments", "distill.py"))["get_config"]()
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=message):
        distill_recipe.run(config, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
