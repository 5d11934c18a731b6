"""Rewards are total functions of untrusted text; estimators match their closed forms."""

import ast
import builtins
import inspect
import math
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_rl import eval_metrics, rewards
from moe_rl.data.tasks import Example, Task, get_task

FUZZ = settings(max_examples=200, deadline=None)
FRAGMENTS = st.lists(
    st.sampled_from(
        ["<think>", "</think>", "<answer>", "</answer>", "<answer", "\\boxed{", "{", "}", " ", "\n"]
        + ["42", "-", "3/4", "(", ")", "*", "/", "+", "x", "\ufffd", "é", "\x00"]
    ),
    max_size=40,
).map("".join)


class ExactTask(Task):
    """A math task whose verifier is exact string equality, to isolate math-verify."""

    name = "exact"
    math_answer = True

    def stream(self, split, seed=0):
        raise NotImplementedError

    def verify(self, answer, example):
        return float(answer == example.answer)


class BrokenTask(ExactTask):
    def __init__(self, result):
        self.result = result

    def verify(self, answer, example):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>x</think><answer> 42 </answer>", "42"),
        ("<answer>1</answer> text <answer>2</answer>", "2"),
        ("<answer>1</answer><answer>2", "1"),  # the last *complete* pair
        ("<answer>a<answer>b</answer>", "b"),
        ("<answer>\n-7\n</answer>\n", "-7"),
        ("no tags at all", None),
        ("<answer>   </answer>", None),
        ("</answer>5<answer>", None),
        ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{a} then \\boxed{b}", "b"),
        ("\\boxed{x^{2}+{1}} trailing", "x^{2}+{1}"),
        ("\\boxed{unbalanced {", None),
        ("<answer>The answer is \\boxed{7}.</answer>", "7"),
        (b"<answer>5</answer>", "5"),
        (b"<answer>\xff5</answer>", "\ufffd5"),
    ],
)
def test_extract_answer(text, expected):
    assert rewards.extract_answer(text) == expected


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "response, think_opened, expected",
    [
        ("<think>r</think><answer>4</answer>", False, 1.0),
        ("  <think>\nr\n</think>\n\n<answer> 4 </answer>  \n", False, 1.0),
        ("<think></think><answer>4</answer>", False, 1.0),  # empty reasoning is allowed
        (" reasoning </think> <answer>4</answer>", True, 1.0),
        ("<think>r</think><answer>4</answer>", True, 0.0),  # a second <think>
        ("reasoning </think> <answer>4</answer>", False, 0.0),  # not opened
        ("<think>r</think><answer>4</answer> bye", False, 0.0),  # text after </answer>
        ("hi <think>r</think><answer>4</answer>", False, 0.0),  # text before <think>
        ("<think>r</think> so <answer>4</answer>", False, 0.0),  # text between blocks
        ("<think>r</think><answer> </answer>", False, 0.0),  # empty answer
        ("<think>r</think><answer>4", False, 0.0),  # unclosed answer
        ("<think>r<answer>4</answer>", False, 0.0),  # unclosed think
        ("<think>r</think><answer>4</answer><answer>5</answer>", False, 0.0),  # repeated
        ("<think>a<think>b</think></think><answer>4</answer>", False, 0.0),  # nested
        ("<think>r</think><answer>4<answer>5</answer></answer>", False, 0.0),  # nested
        ("<answer>4</answer><think>r</think>", False, 0.0),  # wrong order
        ("<think>r</think><answer>4</answer></think>", False, 0.0),
        ("", False, 0.0),
        ("", True, 0.0),
    ],
)
def test_format_reward(response, think_opened, expected):
    assert rewards.format_reward(response, think_opened=think_opened) == expected


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    "text, expected",
    [
        ("46", Fraction(46)),
        (" -4 ", Fraction(-4)),
        ("- 4", Fraction(-4)),
        ("+3", Fraction(3)),
        ("46.0", Fraction(46)),
        ("0.75", Fraction(3, 4)),
        ("3/4", Fraction(3, 4)),
        ("-6 / 8", Fraction(-3, 4)),
        ("1/0", None),
        ("4 6", None),
        ("1e5", None),
        ("x", None),
        ("", None),
        ("٣", None),  # non-ASCII digits are not numbers here
        ("9" * 1000, None),
    ],
)
def test_parse_number(text, expected):
    assert rewards.parse_number(text) == expected


@pytest.mark.parametrize(
    "text, value",
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 - 2 - 1", 4),
        ("8 / 4 / 2", 1),
        ("1 / 3 * 3", 1),
        ("-(2 - 5)", 3),
        ("--2", 2),
        (" 2*(3+4) ", 14),
        ("0.5 * 4", 2),
    ],
)
def test_evaluate_expression_valid(text, value):
    result = rewards.evaluate_expression(text)
    assert result is not None and result[0] == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1 +",
        "(1 + 2",
        "1 + 2)",
        "()",
        "1 2",
        "2 ** 3",
        "9**9**9",
        "1 / 0",
        "1 / (2 - 2)",
        "x + 1",
        "__import__('os').system('true')",
        "1 = 1",
        "1 + 2 = 3",
        "(" * 40 + "1" + ")" * 40,  # too deep
        "-" * 100 + "1",  # too deep
        "(" * 100_000 + "1" + ")" * 100_000,  # too long
        "9" * 31,  # literal too long
        "1+" * 200 + "1",  # too long
        "1 ÷ 2",
    ],
)
def test_evaluate_expression_invalid(text):
    assert rewards.evaluate_expression(text) is None


def test_evaluate_expression_is_exact_and_bounded():
    value, literals = rewards.evaluate_expression("(1/3 + 1/6) * 2")
    assert value == 1 and literals == [1, 3, 1, 6, 2]
    start = time.perf_counter()
    big = rewards.evaluate_expression("*".join(["9" * 30] * 8))
    assert big is not None and big[0] == int("9" * 30) ** 8
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    "expression, use_all, ok",
    [
        ("3 * 5 + 7", False, True),
        ("7 + 5 * 3", True, True),
        ("3 * 5 + 7 + 0", False, False),  # 0 is not given
        ("3 * 5 + 7 - 3 + 3", False, False),  # 3 reused
        ("(7 + 5 - 1) * 2", False, False),  # numbers not given
        ("22", False, False),
        ("3 * 7 + 1", False, False),  # 1 not given
        ("5 * 5 - 3", False, False),  # 5 reused
        ("3 * 5 + 7 = 22", False, False),  # an equation, not an expression
        ("", False, False),
    ],
)
def test_check_countdown(expression, use_all, ok):
    assert rewards.check_countdown(expression, [3, 5, 7], 22, use_all=use_all) is ok


def test_check_countdown_use_all_and_duplicates():
    assert rewards.check_countdown("4 * 5", [4, 5, 9], 20)
    assert not rewards.check_countdown("4 * 5", [4, 5, 9], 20, use_all=True)
    assert rewards.check_countdown("2 * 2 + 6", [2, 2, 6], 10, use_all=True)
    assert not rewards.check_countdown("2 * 2 * 2 + 2", [2, 2, 6], 10)
    assert rewards.check_countdown("6 / (1 - 3 / 4)", [1, 3, 4, 6], 24, use_all=True)


def test_rewards_module_never_calls_eval_or_exec(monkeypatch):
    tree = ast.parse(inspect.getsource(rewards))
    called = {
        n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "id")
    }
    assert not called & {"eval", "exec", "compile", "__import__"}

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert rewards.check_countdown("(3 + 5) * 7 - 34", [3, 5, 7, 34], 22)
    assert rewards.evaluate_expression("__import__('os')") is None


@FUZZ
@given(st.one_of(st.text(max_size=300), FRAGMENTS))
def test_evaluate_expression_total(text):
    result = rewards.evaluate_expression(text)
    assert result is None or isinstance(result[0], Fraction)
    assert rewards.parse_number(text) is None or isinstance(rewards.parse_number(text), Fraction)
    assert isinstance(rewards.check_countdown(text, [1, 2, 3], 6), bool)


# ----------------------------------------------------------------------------- math-verify


@pytest.mark.parametrize(
    "pred, gold, equal",
    [
        ("3/4", "0.75", True),
        ("\\frac{3}{4}", "0.75", True),
        ("0.75", "3/4", True),
        ("-4", "-4", True),
        ("3 + x**2", "x**2 + 3", True),
        ("46", "45", False),
        ("Ture", "True", False),  # words are not checked symbolically
        ("", "1", False),
        ("1" * 300, "1" * 300, False),  # too long to hand to sympy
    ],
)
def test_math_equal(pred, gold, equal):
    assert rewards.math_equal(pred, gold) is equal


def test_math_equal_adversarial_is_bounded():
    start = time.perf_counter()
    assert rewards.math_equal("9^{9^{9}}", "5") is False
    assert time.perf_counter() - start < 10
    # 80 nested parentheses (163 characters) parsed for 13 s: now refused before parsing.
    deep = "(" * 80 + "1" + ")" * 80
    start = time.perf_counter()
    assert rewards.math_equal(deep, "1") is False
    assert rewards.math_equal("2^2^2^2^2", "65536") is False
    assert time.perf_counter() - start < 1.0
    assert rewards.math_equal("((1/2))", "0.5") is True  # shallow nesting still works


def test_math_equal_skipped_off_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(rewards.math_equal("3/4", "0.75")))
    thread.start()
    thread.join()
    assert results == [False]


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_math_equal_total(pred, gold):
    assert isinstance(rewards.math_equal(pred, gold), bool)


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_reward_math_verify_option():
    example = Example("q", "0.75")
    response = "<think>r</think><answer>\\frac{3}{4}</answer>"
    assert rewards.accuracy_reward(response, example, ExactTask()) == 0.0
    assert rewards.accuracy_reward(response, example, ExactTask(), use_math_verify=True) == 1.0
    assert rewards.accuracy_reward("<answer>1</answer>", example, ExactTask(), True) == 0.0
    assert rewards.accuracy_reward("no answer", example, ExactTask(), True) == 0.0


def test_math_verify_does_not_reward_the_question_copied():
    """Arithmetic answers are numbers: an expression equal to the answer (the question itself)
    is not one, with or without the symbolic check; another form of the number still is."""
    task = get_task("arithmetic", num_terms=3)
    example = Example("Compute 49 + 5 + 65", "119")
    for copied in ("49 + 5 + 65", "49+5+65", "65 + 54", "(49 + 5) + 65"):
        response = f"<think>r</think><answer>{copied}</answer>"
        assert rewards.accuracy_reward(response, example, task, use_math_verify=True) == 0.0
    assert rewards.accuracy_reward("<answer>119</answer>", example, task, True) == 1.0
    assert rewards.accuracy_reward("<answer>119.0</answer>", example, task, True) == 1.0
    assert rewards.accuracy_reward("<answer>238/2</answer>", example, task, True) == 1.0
    assert rewards.is_number("\\frac{3}{4}") and not rewards.is_number("1 + 1")


def test_math_verify_not_used_for_non_math_tasks():
    task = get_task("countdown")
    example = Example("q", "3 * 5 + 7", {"numbers": [3, 5, 7], "target": 22})
    # "22" is math-equal to the reference expression but is not a solution.
    assert rewards.accuracy_reward("<answer>22</answer>", example, task, use_math_verify=True) == 0
    assert rewards.accuracy_reward("<answer>7+3*5</answer>", example, task) == 1.0


@pytest.mark.parametrize("result", [ValueError("boom"), float("nan"), float("inf"), 7.0, -1.0])
def test_accuracy_reward_survives_bad_verifiers(result):
    score = rewards.accuracy_reward("<answer>1</answer>", Example("q", "1"), BrokenTask(result))
    assert 0.0 <= score <= 1.0


def test_arithmetic_negative_and_fraction_answers():
    task = get_task("arithmetic", operators="-")
    example = Example("Compute 3 - 7", "-4")
    for answer, score in [("-4", 1), (" - 4 ", 1), ("-4.0", 1), ("4", 0), ("-8/2", 1), ("3-7", 0)]:
        assert rewards.accuracy_reward(f"<answer>{answer}</answer>", example, task) == score


@FUZZ
@given(st.one_of(st.text(), FRAGMENTS, st.binary().map(lambda b: b.decode("utf-8", "replace"))))
def test_rewards_are_total(response):
    for task, example in [
        (get_task("arithmetic"), Example("Compute 1 + 2", "3")),
        (get_task("countdown"), Example("q", "1 + 2", {"numbers": [1, 2], "target": 3})),
    ]:
        out = rewards.compute_rewards([response], [example], task, think_opened=True)
        for value in out.values():
            assert value.shape == (1,) and np.all(np.isfinite(value))
        assert 0.0 <= out["accuracy"][0] <= 1.0
    answer = rewards.extract_answer(response)
    assert answer is None or (isinstance(answer, str) and answer == answer.strip() and answer)
    assert rewards.format_reward(response) in (0.0, 1.0)


def test_rewards_handle_huge_inputs():
    huge = "<answer>" * 100_000 + "\\boxed{" * 100_000 + "(" * 100_000
    start = time.perf_counter()
    out = rewards.compute_rewards([huge], [Example("q", "1")], get_task("arithmetic"))
    assert out["total"][0] == 0.0
    assert time.perf_counter() - start < 2


# ----------------------------------------------------------------------------- overlong, combined


def test_overlong_penalty_matches_dapo():
    lengths = np.array([0, 80, 81, 90, 100, 101, 10_000])
    expected = [0.0, 0.0, -1 / 20, -10 / 20, -1.0, -1.0, -1.0]
    np.testing.assert_allclose(rewards.overlong_penalty(lengths, 100, 20), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="cache_len"):
        rewards.overlong_penalty(lengths, 100, 0)


def test_compute_rewards_weights_and_shapes():
    task = get_task("arithmetic")
    examples = [Example("Compute 1 + 2", "3")] * 3
    responses = [
        "<think>1+2</think><answer>3</answer>",
        "<think>1+2</think><answer>4</answer>",
        "the answer is \\boxed{3}",
    ]
    out = rewards.compute_rewards(
        responses, examples, task, num_tokens=[10, 95, 200], max_len=100, cache_len=10
    )
    np.testing.assert_array_equal(out["accuracy"], [1, 0, 1])
    np.testing.assert_array_equal(out["format"], [1, 1, 0])
    np.testing.assert_allclose(out["overlong"], [0, -0.5, -1])
    np.testing.assert_allclose(out["total"], [1.1, 0.1 - 0.5, 0.0], atol=1e-6)
    assert all(v.dtype == np.float32 for v in out.values())
    assert np.all(rewards.compute_rewards(responses, examples, task)["overlong"] == 0)
    with pytest.raises(ValueError):
        rewards.compute_rewards(responses, examples[:2], task)


# ----------------------------------------------------------------------------- estimators


def test_pass_at_k_matches_closed_form():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert eval_metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges_and_arrays():
    assert eval_metrics.pass_at_k(10, 0, 5) == 0.0
    assert eval_metrics.pass_at_k(10, 6, 5) == 1.0  # n - c < k
    assert eval_metrics.pass_at_k(10, 1, 1) == pytest.approx(0.1)
    out = eval_metrics.pass_at_k(np.array([4, 4, 200]), np.array([0, 4, 3]), 2)
    assert out.shape == (3,) and out[0] == 0 and out[1] == 1
    assert out[2] == pytest.approx(1 - math.comb(197, 2) / math.comb(200, 2))
    for n, c, k in [(3, 1, 4), (3, 4, 1), (3, -1, 1), (3, 1, 0)]:
        with pytest.raises(ValueError):
            eval_metrics.pass_at_k(n, c, k)


def test_pass_at_1():
    assert eval_metrics.pass_at_1([[1, 0, 0, 1], [1, 1, 1, 1]]) == 0.75
    assert eval_metrics.pass_at_1([[1.0], [0.0, 1.0]]) == 0.75
    with pytest.raises(ValueError):
        eval_metrics.pass_at_1([])


def test_majority_vote_and_ties():
    assert eval_metrics.majority_vote(["3", "4", "4", None, ""]) == "4"
    assert eval_metrics.majority_vote(["4", "3", "3", "4"]) == "4"  # tie: first seen wins
    assert eval_metrics.majority_vote(["3", "4", "4", "3"]) == "3"
    assert eval_metrics.majority_vote(["0.75", "1", "3/4", " 1 "]) == "0.75"  # same value
    assert eval_metrics.majority_vote(["a  b", "c", "a b"]) == "a  b"
    assert eval_metrics.majority_vote([None, "", "  "]) is None
    assert eval_metrics.majority_vote([]) is None


def test_maj_at_k_uses_the_verifier():
    task = get_task("arithmetic")
    example = Example("Compute 1 + 2", "3")
    verify = lambda answer: task.verify(answer, example)
    assert eval_metrics.maj_at_k(["3", "3.0", "4", None], verify) == 1.0
    assert eval_metrics.maj_at_k(["4", "4", "3", None, None, None], verify) == 0.0
    assert eval_metrics.maj_at_k([None, None], verify) == 0.0
