"""Tasks: registry, disjoint train/test splits, knobs, verifiers, templates, rg and tfds loaders."""

import json
import random
import socket
import string
import sys

import pytest

from moe_rl import rewards
from moe_rl.data.tasks import Example, format_prompt, get_task, split_of, templates

BUILTINS = [
    ("arithmetic", {}),
    ("arithmetic", {"num_digits": 3, "num_terms": 4, "operators": "+-*"}),
    ("arithmetic", {"num_digits": 1}),  # 100 questions: a tiny space still splits
    ("countdown", {}),
    ("countdown", {"num_numbers": 4, "min_value": 1, "max_value": 20, "use_all": True}),
]


def test_unknown_task_lists_registered_names_and_prefixes():
    with pytest.raises(ValueError) as err:
        get_task("no_such_task")
    for part in ("arithmetic", "countdown", "rg:", "tfds:"):
        assert part in str(err.value)


@pytest.mark.parametrize("name, kwargs", BUILTINS)
def test_builtin_splits_are_disjoint_and_deterministic(name, kwargs):
    task = get_task(name, **kwargs)
    test = task.examples("test", 100, seed=0)
    train = task.examples("train", 1000, seed=0) + task.examples("train", 1000, seed=1)
    assert len(test) == 100 and len(train) == 2000
    assert not {e.question for e in test} & {e.question for e in train}
    assert all(split_of(e.question, task.test_fraction) == "test" for e in test)
    assert task.examples("test", 100, seed=0) == test
    assert task.examples("train", 50, seed=2) != train[:50]


@pytest.mark.parametrize("name, kwargs", BUILTINS)
def test_builtin_reference_answers_verify(name, kwargs):
    task = get_task(name, **kwargs)
    for example in task.examples("train", 200, seed=3):
        assert task.verify(example.answer, example) == 1.0
        assert task.verify("", example) == 0.0
        assert task.verify(example.answer + " + 1", example) == 0.0


def test_arithmetic_knobs():
    task = get_task("arithmetic", num_digits=3, num_terms=4, operators="-*")
    for example in task.examples("train", 200):
        tokens = example.meta["expression"].split()
        assert len(tokens) == 7 and set(tokens[1::2]) <= {"-", "*"}
        assert all(0 <= int(t) < 1000 for t in tokens[::2])
        assert example.question == f"Compute {example.meta['expression']}"
    easy = get_task("arithmetic").examples("train", 200)
    assert all(" + " in e.question and int(e.answer) <= 198 for e in easy)
    for bad in [{"num_digits": 0}, {"num_terms": 1}, {"operators": "/"}, {"operators": ""}]:
        with pytest.raises(ValueError):
            get_task("arithmetic", **bad)


def test_countdown_knobs_and_solvability():
    task = get_task("countdown", num_numbers=4, min_value=2, max_value=9, max_target=50)
    for example in task.examples("train", 200):
        numbers, target = example.meta["numbers"], example.meta["target"]
        assert len(numbers) == 4 and all(2 <= n <= 9 for n in numbers)
        assert 1 <= target <= 50 and target not in numbers
        assert str(numbers) in example.question and str(target) in example.question
        # The reference uses every number exactly once, so both rules are satisfiable.
        assert rewards.check_countdown(example.answer, numbers, target, use_all=True)
    for bad in [{"num_numbers": 1}, {"min_value": 0}, {"min_value": 5, "max_value": 4}]:
        with pytest.raises(ValueError):
            get_task("countdown", **bad)


def test_countdown_number_rule():
    example = Example("q", "4 * 5 - 9", {"numbers": [4, 5, 9], "target": 11})
    at_most_once, exactly_once = get_task("countdown"), get_task("countdown", use_all=True)
    assert at_most_once.verify("9 + 4 / 2", example) == 0.0  # 2 is not given
    assert at_most_once.verify("4 * 5 - 9", example) == exactly_once.verify("4*5-9", example) == 1
    example = Example("q", "4 * 5 - 9", {"numbers": [4, 5, 9], "target": 9})
    assert at_most_once.verify("9", example) == 1.0 and exactly_once.verify("9", example) == 0.0
    assert "at most once" in at_most_once.examples("test", 1)[0].question
    assert "exactly once" in exactly_once.examples("test", 1)[0].question


def test_split_errors_and_tiny_question_space():
    task = get_task("arithmetic")
    with pytest.raises(ValueError, match="split"):
        task.examples("validation", 1)
    with pytest.raises(ValueError, match="test_fraction"):
        get_task("arithmetic", test_fraction=1.0)
    tiny = get_task("countdown", num_numbers=2, min_value=1, max_value=1, test_fraction=0.5)
    tiny.max_rejections = 100
    with pytest.raises(RuntimeError, match="too small"):
        tiny.examples("test", 5) + tiny.examples("train", 5)


def test_split_of_is_a_stable_fraction():
    assert split_of("Compute 1 + 2", 0.1) == split_of("Compute 1 + 2", 0.1)
    questions = [f"question {i}" for i in range(4000)]
    share = sum(split_of(q, 0.25) == "test" for q in questions) / len(questions)
    assert 0.2 < share < 0.3


# ----------------------------------------------------------------------------- templates


def test_r1_zero_template_is_the_papers():
    expected = (
        "A conversation between User and Assistant. The user asks a question, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then "
        "provides the user with the answer. The reasoning process and answer are enclosed within "
        "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
        "process here </think> <answer> answer here </answer>. User: Compute 1 + 2. Assistant:"
    )
    assert format_prompt("r1_zero", "Compute 1 + 2") == expected
    assert format_prompt("r1_zero", "Compute 1 + 2", think_opened=True) == expected + " <think>"
    assert format_prompt("r1_zero", "{x} {}").endswith("User: {x} {}. Assistant:")


def test_plain_and_unknown_templates():
    assert format_prompt("plain", "Compute 1 + 2") == "Question: Compute 1 + 2\nAnswer:"
    with pytest.raises(ValueError) as err:
        format_prompt("alpaca", "q")
    assert all(name in str(err.value) for name in ("r1_zero", "plain", "chat"))
    with pytest.raises(ValueError, match="chat_template"):
        format_prompt("chat", "q")


def test_chat_template_without_jinja2_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    monkeypatch.setitem(sys.modules, "jinja2.sandbox", None)
    with pytest.raises(ImportError, match="pip install jinja2"):
        format_prompt("chat", "q", chat_template="{{ messages[0]['content'] }}")


def test_chat_template_renders():
    pytest.importorskip("jinja2")
    chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert format_prompt("chat", "hi", chat_template) == "<|user|>hi<|assistant|>"
    assert templates.apply_chat_template(chat_template, [], add_generation_prompt=False) == ""
    assert format_prompt("chat", "hi", chat_template, think_opened=True).endswith("<think>\n")


# ----------------------------------------------------------------------------- reasoning-gym


def test_reasoning_gym_round_trip():
    task = get_task("rg:chain_sum")
    assert task.name == "rg:chain_sum" and not task.math_answer
    example = task.examples("train", 1, seed=0)[0]
    assert task.verify(example.answer, example) == 1.0
    assert task.verify(str(int(example.answer) + 1), example) < 1.0
    assert task.verify("x" * 100_000, example) == 0.0
    response = f"<think>add</think><answer>{example.answer}</answer>"
    assert rewards.compute_rewards([response], [example], task)["total"][0] == pytest.approx(1.1)


def test_reasoning_gym_splits_and_config():
    task = get_task("rg:chain_sum", min_terms=2, max_terms=2, min_digits=2, max_digits=2)
    test = task.examples("test", 30, seed=0)
    train = task.examples("train", 300, seed=0) + task.examples("train", 300, seed=1)
    assert not {e.question for e in test} & {e.question for e in train}
    assert all(e.meta["num_terms"] == 2 for e in train)
    assert task.examples("test", 30, seed=0) == test


def test_reasoning_gym_errors():
    with pytest.raises(ValueError, match="chain_sum"):
        get_task("rg:chain_summ")
    with pytest.raises(ValueError, match="allow_eval_verifier"):
        get_task("rg:spiral_matrix")


# Datasets whose reference answer is an example, not the one solution (their scorer checks a
# solution's validity), or that need a config of their own.
RG_NO_REFERENCE = {"boxnet", "graph_color", "propositional_logic", "rubiks_cube", "rush_hour"}
RG_NEEDS_CONFIG = {"composite"}


def _garbage(n: int = 200) -> list[str]:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.punctuation + " "
    fixed = [
        "",
        " ",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "None",
        "null",
        "[]",
        "{}",
        "?",
        "...",
        "<answer>",
        "\\boxed{}",
        "x" * 50,
        "nan + nanj",
    ]
    return fixed + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)
    ]


def test_reasoning_gym_scorers_give_garbage_zero():
    """Every dataset we allow: a few hundred garbage strings score 0, its reference answer 1,
    and its stream builds quickly (chunks of rg.CHUNK items, not one endless dataset)."""
    from moe_rl.data.tasks import rg

    garbage = _garbage()
    skipped = rg.EVAL_VERIFIERS | rg.COUNTDOWN_LIKE | set(rg.REFUSED_SCORERS) | RG_NEEDS_CONFIG
    allowed = [name for name in rg.available() if name not in skipped]
    assert len(allowed) > 80
    for name in allowed:
        task = get_task(f"rg:{name}")
        example = task.examples("train", 1, seed=0)[0]
        if name not in RG_NO_REFERENCE:
            assert task.verify(example.answer, example) == 1.0, name
        scores = {g: task.verify(g, example) for g in garbage if g != example.answer}
        assert not any(scores.values()), (name, {g: v for g, v in scores.items() if v})


def test_reasoning_gym_refused_and_wrapped_scorers():
    from moe_rl.data.tasks import rg

    with pytest.raises(ValueError, match="game_of_life_halting.*any non-empty answer"):
        get_task("rg:game_of_life_halting")
    task = get_task("rg:complex_arithmetic")
    example = task.examples("test", 1)[0]
    assert task.verify(example.answer, example) == 1.0
    assert task.verify("nan", example) == task.verify("inf + 2i", example) == 0.0
    # Partial credit on request: spell_backward's similarity score for a near miss.
    near = get_task("rg:spell_backward", partial_credit=True)
    ex = near.examples("test", 1)[0]
    assert 0.0 < near.verify(ex.answer[:-1] + "#", ex) < 1.0
    assert get_task("rg:spell_backward").verify(ex.answer[:-1] + "#", ex) == 0.0
    assert rg.CHUNK <= 256


def test_reasoning_gym_countdown_is_verified_without_eval(monkeypatch):
    import sympy.parsing.sympy_parser

    def forbidden(*args, **kwargs):
        raise AssertionError("parse_expr called")

    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", forbidden)
    monkeypatch.setattr("reasoning_gym.games.countdown.parse_expr", forbidden)
    task = get_task("rg:countdown")
    example = task.examples("test", 1)[0]
    numbers = example.meta["numbers"]
    assert task.verify(example.answer, example) == 1.0
    assert task.verify(" + ".join(map(str, numbers)), example) == 0.0
    assert task.verify("__import__('os').system('true')", example) == 0.0


# ----------------------------------------------------------------------------- tfds


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tfds_not_prepared_is_a_clear_error(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as err:
        get_task("tfds:math_dataset/arithmetic__add_or_sub", data_dir=str(tmp_path))
    message = str(err.value)
    assert "cannot be downloaded" in message and str(tmp_path) in message
    assert "tfds build math_dataset/arithmetic__add_or_sub" in message and "data_dir" in message
    assert not list(tmp_path.iterdir())


def test_tfds_unsupported_dataset(no_network):
    with pytest.raises(ValueError, match="arithmetic__add_or_sub"):
        get_task("tfds:mnist")
    with pytest.raises(ValueError, match="only math_dataset"):
        get_task("tfds:math_dataset/no_such_module")


def test_tfds_prepared_source(tmp_path, no_network):
    import tensorflow_datasets as tfds

    records = [
        {"question": b"What is 1 + 2?", "answer": b"3\n"},
        {"question": b"Let x = 3/4. What is x?", "answer": b"3/4"},
        {"question": b"Expand (x + 1)**2.", "answer": b"x**2 + 2*x + 1"},
    ]
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kw: records):
        task = get_task("tfds:math_dataset/arithmetic__add_or_sub", data_dir=str(tmp_path))
    examples = task.examples("test", 6, seed=0)
    assert sorted(e.question for e in examples[:3]) == sorted(
        r["question"].decode() for r in records
    )
    by_answer = {e.answer: e for e in examples}
    assert task.verify("3", by_answer["3"]) == 1.0
    assert task.verify("0.75", by_answer["3/4"]) == 1.0
    assert task.verify("x**2+2*x+1", by_answer["x**2 + 2*x + 1"]) == 1.0
    assert task.verify("4", by_answer["3"]) == 0.0
    response = "<answer>1 + 2*x + x^2</answer>"
    example = by_answer["x**2 + 2*x + 1"]
    assert rewards.accuracy_reward(response, example, task) == 0.0
    assert rewards.accuracy_reward(response, example, task, use_math_verify=True) == 1.0


def _write_gsm8k_like(path, n=60):
    rows = [
        {
            "question": f"Ann has {i} apples and buys {i + 3}. How many now?",
            "answer": f"She has {i} + {i + 3} = {2 * i + 3} apples.\n#### {2 * i + 3:,}",
        }
        for i in range(n)
    ]
    rows[5]["answer"] = "#### 1,234"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def test_jsonl_task_reads_gsm8k_answers_and_splits_by_hash(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    _write_gsm8k_like(path)
    task = get_task(f"jsonl:{path}")
    train, test = task.examples("train", 500), task.examples("test", 200)
    questions = {e.question for e in train} | {e.question for e in test}
    assert len(questions) == 60 and not {e.question for e in train} & {e.question for e in test}
    by_question = {e.question: e for e in train + test}
    assert by_question["Ann has 5 apples and buys 8. How many now?"].answer == "1234"
    assert by_question["Ann has 7 apples and buys 10. How many now?"].answer == "17"
    assert task.numeric_answer and task.math_answer
    ex = by_question["Ann has 7 apples and buys 10. How many now?"]
    assert task.verify("17", ex) == 1.0 and task.verify(" 17.0 ", ex) == 1.0
    assert task.verify("18", ex) == 0.0 and task.verify("seventeen", ex) == 0.0
    assert task.verify("1,234", by_question["Ann has 5 apples and buys 8. How many now?"]) == 1.0
    # The same stream for the same seed; another order for another.
    assert task.examples("train", 20, seed=1) == task.examples("train", 20, seed=1)
    assert task.examples("train", 20, seed=1) != task.examples("train", 20, seed=2)


def test_parquet_task_reads_math_boxed_solutions_with_a_test_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(path, n, start):
        rows = [
            {"problem": f"Simplify {i}/{2 * i}.", "solution": "$\\boxed{\\frac{1}{2}}$"}
            for i in range(start, start + n)
        ]
        pq.write_table(pa.Table.from_pylist(rows), path)

    write(tmp_path / "train.parquet", 8, 1)
    write(tmp_path / "test.parquet", 3, 100)
    task = get_task(
        f"parquet:{tmp_path / 'train.parquet'}", test_path=str(tmp_path / "test.parquet")
    )
    test = task.examples("test", 3)
    assert {e.question for e in test} == {f"Simplify {i}/{2 * i}." for i in (100, 101, 102)}
    assert test[0].answer == "\\frac{1}{2}" and task.numeric_answer  # a fraction is a number
    assert task.verify("\\frac{1}{2}", test[0]) == 1.0 and task.verify("1/3", test[0]) == 0.0


def test_hf_task_reads_a_datasets_folder_with_its_splits(tmp_path, monkeypatch):
    """hf:<dataset> through datasets.load_dataset, offline: a local folder of train/test files
    (what a Hub dataset is, once in the cache)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "gsm8k_like"
    folder.mkdir()
    rows = _write_gsm8k_like(folder / "train.jsonl", 40)
    with open(folder / "test.jsonl", "w") as f:
        f.write(json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}) + "\n")
    task = get_task(f"hf:{folder}")
    assert task.name == f"hf:{folder}" and task.numeric_answer
    assert [e.question for e in task.examples("test", 3)] == ["What is 2 + 2?"] * 3
    train = task.examples("train", 100)
    assert {e.question for e in train} == {r["question"] for r in rows}
    assert task.verify("4", task.examples("test", 1)[0]) == 1.0
    # test_split='' splits the train split by the question's hash, as the file tasks do.
    hashed = get_task(f"hf:{folder}", test_split="")
    held = {e.question for e in hashed.examples("test", 100)}
    assert held and held < {r["question"] for r in rows}
    assert not held & {e.question for e in hashed.examples("train", 100)}
    with pytest.raises(ValueError, match=f"task hf:{folder}: split 'validation'"):
        get_task(f"hf:{folder}", test_split="validation")


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"question_key": "q"},
            r"question_key='q' is not a field; fields: \['question', 'answer'\]",
        ),
        ({"answer_format": "latex"}, r"answer_format='latex'; allowed"),
        ({"answer_format": "boxed"}, r"no train example with a boxed answer in field 'answer'"),
    ],
)
def test_file_task_errors_name_the_option(tmp_path, options, message):
    path = tmp_path / "q.jsonl"
    _write_gsm8k_like(path, 20)
    with pytest.raises(ValueError, match=message):
        get_task(f"jsonl:{path}", **options)
    with pytest.raises(FileNotFoundError, match="no such file"):
        get_task(f"jsonl:{tmp_path / 'missing.jsonl'}")
