"""The R1 pipeline (recipes/r1.py) and its cold-start data (data/cold_start.py)."""

import json
import os
import runpy

import numpy as np
import pytest

from moe_rl import checkpoint, evaluate, rewards
from moe_rl.data import cold_start
from moe_rl.data.tasks import get_task
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import r1
from moe_rl.train import distill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("num_terms", [2, 3])
def test_cold_start_examples_are_correct_and_in_format(num_terms):
    task = get_task("arithmetic", num_digits=3, num_terms=num_terms)
    examples = task.examples("train", 200, seed=0)
    for think_opened in (False, True):
        rows = cold_start.cold_start_rows(examples, "r1_zero", think_opened)
        for ex, row in zip(examples, rows, strict=True):
            text = row["completion"]
            assert rewards.format_reward(text, think_opened) == 1.0, text
            assert rewards.score_answer(rewards.extract_answer(text), ex, task) == 1.0, text
            assert row["prompt"].endswith("<think>") == think_opened
            # The work is long reasoning: a sentence per column, then the summary.
            assert text.count(" by columns.") == num_terms - 1
            assert f"= {ex.answer}. </think>" in text


def test_worked_sum_columns_and_carries():
    steps, total = cold_start.worked_sum("47 + 38")
    assert total == 85
    assert steps == [
        "47 + 38 by columns.",
        "Ones: 7 + 8 = 15, write 5 carry 1.",
        "Tens: 4 + 3 + 1 = 8, write 8.",
        "So 47 + 38 = 85.",
    ]
    assert cold_start.worked_sum("99 + 1")[1] == 100
    with pytest.raises(ValueError, match="sums of non-negative integers.*config.task"):
        cold_start.worked_sum("12 - 3")


def tiny_r1_config(base: str):
    config = runpy.run_path(os.path.join(ROOT, "experiments/r1.py"))["get_config"]()
    config.update_from_flattened_dict(
        {
            "init_checkpoint": base,
            "grpo.num_steps": 2,
            "grpo.num_questions": 2,
            "grpo.num_generations": 2,
            "grpo.minibatch_size": 4,
            "grpo.checkpoint_every": 1,
            "sampling.max_new_tokens": 6,
            "cold_start.num_examples": 8,
            "cold_start.train.num_steps": 2,
            "cold_start.train.batch_size": 2,
            "cold_start.train.seq_len": 64,
            "rejection.num_questions": 3,
            "rejection.samples_per_question": 2,
            "rejection.sampling.max_new_tokens": 6,
            "sft.train.num_steps": 2,
            "sft.train.batch_size": 2,
            "sft.train.seq_len": 64,
            "final_grpo.num_steps": 1,
            "eval.num_questions": 2,
            "eval.num_samples": 2,
            "eval.batch_size": 4,
            "eval.sampling.max_new_tokens": 6,
        }
    )
    return config


def test_r1_pipeline_end_to_end(tmp_path, monkeypatch):
    """Every stage runs, in its own folder, and the table has a row per stage. A random base
    writes no verified answer, so rejection sampling accepts everything here."""
    base = str(tmp_path / "base")
    config = tiny_r1_config(base)
    ckpt = checkpoint.Checkpointer(base, async_save=False)
    ckpt.save(
        1, {"step": np.int32(1), **evaluate.init_model(ModelConfig.from_config(config.model), 0)}
    )
    ckpt.close()
    monkeypatch.setattr(
        distill, "verify", lambda task, ex, texts, k, opened: ([[True] * k] * len(ex),) * 2
    )
    work = str(tmp_path / "r1")
    summary = r1.run(config, work)
    assert list(summary["results"]) == ["base", "cold_start", "rl", "sft", "rl2"]
    for folder in ("cold_start", "rl/grpo", "sft", "rl2/grpo"):
        assert checkpoint.Checkpointer(os.path.join(work, folder), async_save=False).latest_step()
    assert summary["rejection"]["kept"] == 6  # 3 questions x 2 samples, all accepted, distinct
    with open(os.path.join(work, "data", "combined_train.jsonl")) as f:
        combined = [json.loads(line) for line in f]
    assert any("by columns." in r["completion"] for r in combined)  # the cold-start examples
    assert summary["sft_rows"] == summary["rejection"]["kept"] + 8
    for stage in ("cold-start SFT", "2. GRPO", "4. SFT of base", "5. final GRPO"):
        assert stage in summary["table"]


@pytest.mark.parametrize(
    "key,value",
    [
        ("task.name", "countdown"),
        ("final_grpo.num_steps", -1),
        ("cold_start.num_examples", 1),
        ("sft.validation_fraction", 1.0),
    ],
)
def test_r1_config_errors_name_the_key(key, value):
    config = tiny_r1_config("")
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=f"config.{key}="):
        r1.run(config, "/nonexistent/never/written")
