"""Recipe 'eval': metric aggregation, checkpoint loading, config errors, an end-to-end run."""

import json
import math
import os
import runpy

import jax
import ml_collections
import numpy as np
import pytest

from moe_rl import checkpoint, evaluate
from moe_rl.data.tasks import Example, get_task, parse_options, task_from_config
from moe_rl.models import transformer
from moe_rl.recipes import eval as eval_recipe
from tests.utils import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_eval_config(**task):
    config = runpy.run_path(os.path.join(ROOT, "experiments/eval.py"))["get_config"]()
    config.task.update(num_questions=3, **task)
    config.eval.update(num_samples=2, batch_size=4, num_printed=2)
    config.sampling.max_new_tokens = 6
    return config


def test_score_question_and_summary_by_hand():
    task = get_task("arithmetic")
    ex = Example("What is 2 + 3?", "5")
    texts = [
        "<think> 2 + 3 = 5 </think> <answer> 5 </answer>",  # correct, formatted
        "<answer>6</answer>",  # wrong, not formatted
        "<think> hmm </think> <answer> 5 </answer>",  # correct, formatted
        "no answer at all",
    ]
    s = evaluate.score_question(
        task, ex, texts, [10, 3, 8, 20], [False, False, False, True], think_opened=False, math=True
    )
    np.testing.assert_array_equal(s["accuracy"], [1, 0, 1, 0])
    np.testing.assert_array_equal(s["format"], [1, 0, 1, 0])
    assert s["maj"] == 1.0  # '5' twice beats '6' once

    wrong = evaluate.score_question(
        task, ex, ["<answer>7</answer>"] * 4, [4] * 4, [False] * 4, think_opened=False, math=True
    )
    m = evaluate.summarize([s, wrong], k=4)
    assert m["pass@1"] == pytest.approx(2 / 8)
    # question 1: n=4, c=2 -> pass@2 = 1 - C(2,2)/C(4,2) = 5/6; question 2: 0
    assert m["pass@2"] == pytest.approx((1 - math.comb(2, 2) / math.comb(4, 2)) / 2)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@4"] == pytest.approx(0.5)
    assert m["format_rate"] == pytest.approx(2 / 8)
    assert m["truncated_rate"] == pytest.approx(1 / 8)
    assert m["mean_length_correct"] == pytest.approx(9.0)
    assert m["mean_length_incorrect"] == pytest.approx((3 + 20 + 16) / 6)


def test_first_line_extraction_for_plain_prompts():
    assert evaluate.extract(" 127.\nSo the answer is 3", "first_line") == "127"
    assert evaluate.extract("  \n", "first_line") is None
    assert evaluate.extract(" 127.\n<answer>3</answer>", "tags") == "3"


def test_summary_without_correct_answers_has_no_correct_length():
    task = get_task("arithmetic")
    s = evaluate.score_question(
        task, Example("1 + 1", "2"), ["x"], [1], [False], think_opened=False, math=False
    )
    assert evaluate.summarize([s], k=1)["mean_length_correct"] is None


def test_parse_options():
    assert parse_options("num_digits=3, operators='+-',name=abc") == {
        "num_digits": 3,
        "operators": "+-",
        "name": "abc",
    }
    assert parse_options("") == {} and parse_options({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="config.task.options"):
        parse_options("num_digits")


def test_options_of_another_task_name_the_key():
    block = ml_collections.ConfigDict(dict(name="countdown", options="num_digits=2"))
    with pytest.raises(ValueError, match="config.task.options='num_digits=2' does not fit"):
        task_from_config(block)
    block.options = ""
    assert task_from_config(block).name == "countdown"


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("task", "template", "fancy"),
        ("task", "split", "validation"),
        ("eval", "num_samples", 0),
        ("eval", "extract", "regex"),
        ("sampling", "top_p", 1.5),
    ],
)
def test_bad_config_names_the_key(section, key, value):
    config = tiny_eval_config()
    config[section][key] = value
    with pytest.raises(ValueError, match=key):
        evaluate.validate_eval_config(config)


def test_restore_latest_model_reads_params_from_a_train_state(tmp_path):
    cfg = make_config("tiny")
    params, model_state = transformer.init(cfg, jax.random.key(3))
    saved = {
        "step": np.int32(7),
        "params": params,
        "opt_state": {"mu": params},
        "model_state": model_state,
    }
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(7, saved)
    ckpt.close()
    abstract = jax.eval_shape(lambda: {"params": params, "model_state": model_state})
    reader = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    model, step = reader.restore_latest_model(abstract)
    assert step == 7
    jax.tree.map(
        np.testing.assert_array_equal, model, {"params": params, "model_state": model_state}
    )

    other = make_config("tiny", hidden_size=32)
    abstract_other = jax.eval_shape(lambda: evaluate.init_model(other, 0))
    with pytest.raises(ValueError, match="another model"):
        reader.restore_latest_model(abstract_other)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    config = tiny_eval_config()
    config.checkpoint = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="config.checkpoint"):
        eval_recipe.run(config, str(tmp_path / "out"))


def test_eval_end_to_end_on_fresh_model(tmp_path, capsys):
    result = eval_recipe.run(tiny_eval_config(name="countdown"), str(tmp_path))
    m = result["metrics"]
    assert m["questions"] == 3 and m["samples_per_question"] == 2
    assert m["pass@1"] == 0.0  # an untrained model writes random bytes
    assert 1 <= m["mean_length"] <= 6
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["metrics"] == m
    # with what it was made: the template, the sampling settings, the extractor
    settings = saved["settings"]
    assert settings["task"]["template"] == result["settings"]["task"]["template"]
    assert {"temperature", "top_p", "top_k", "max_new_tokens"} <= set(settings["sampling"])
    assert "extract" in settings["eval"] and settings["seed"] == 0
    assert (tmp_path / "samples.txt").read_text().count("=== question") == 4
    assert "| pass@1 |" in capsys.readouterr().out
