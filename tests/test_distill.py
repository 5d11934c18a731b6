"""Teacher rejection sampling (train/distill.py): what is kept, what is written, what is reused."""

import os
import runpy

import jax
import numpy as np
import pytest

from moe_rl import checkpoint, evaluate, sampling
from moe_rl.data import tokenizers
from moe_rl.data.tasks import get_task
from moe_rl.models.config import ModelConfig
from moe_rl.train import distill, distill_data, lm
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


def test_distill_recipe_end_to_end(tmp_path, monkeypatch):
    """A teacher checkpoint -> its (here: all accepted) answers -> student pretraining + SFT ->
    the table. Seconds-long: every stage is a few steps of the tiny models."""
    config = runpy.run_path(os.path.join(ROOT, "experiments/distill.py"))["get_config"]()
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
    # A random teacher writes no verified answer: accept everything to exercise the pipeline.
    monkeypatch.setattr(
        distill, "verify", lambda task, ex, texts, k, opened: ([[True] * k] * len(ex),) * 2
    )
    work = str(tmp_path / "work")
    summary = distill.run(config, work)
    assert summary["data"]["kept"] >= 6 and summary["data"]["sampled"] == 12
    for name in ("teacher", "student base", "student"):
        assert 0.0 <= summary["results"][name]["pass@1"] <= 1.0
        assert f"| {name} |" in summary["table"]
    assert os.path.exists(os.path.join(work, "student", "summary.json"))
    with pytest.raises(ValueError, match="config.distill.mode='gkd'; allowed here"):
        config.distill.mode = "gkd"
        distill.run(config, work)
