"""Rule-based rewards for R1-Zero RL: answer extraction, verification, format, length.

Model output is untrusted input: every reward here is a total function (any string in, a
finite float out, never an exception), and nothing the model wrote reaches `eval`/`exec`.
Arithmetic expressions are read by a small recursive-descent parser with exact
`fractions.Fraction` arithmetic and hard length/depth limits.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from moe_rl.data.tasks import Example, Task

MAX_EXPRESSION_CHARS = 256  # longer answers are not parsed at all
MAX_EXPRESSION_DEPTH = 32  # nesting of parentheses and unary minus
MAX_LITERAL_DIGITS = 30  # one number literal, e.g. no 10**1000-digit integers
MAX_MATH_VERIFY_CHARS = 256  # math-verify (sympy) is only given short answers
# ... and shallow ones: an 80-deep parenthesised answer of 163 characters parsed for 13 s, and
# math-verify's SIGALRM timeout can fire inside a JAX gc callback and be swallowed, so the work
# is bounded before parsing instead.
MAX_MATH_VERIFY_DEPTH = 8  # brackets of any kind nested deeper are not parsed
MAX_MATH_VERIFY_POWERS = 3  # '^' or '**' operators

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED = "\\boxed{"


def _as_text(text: str | bytes) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


# ----------------------------------------------------------------------------- extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` if its braces balance, else None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 1
    for i in range(start + len(_BOXED), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(_BOXED) : i].strip()
    return None


def extract_answer(text: str | bytes) -> str | None:
    """The final answer: the last complete `<answer>...</answer>`, else the last `\\boxed{}`.

    A `\\boxed{}` inside the answer tags is unwrapped. Linear time on any input (`rfind`, no
    backtracking regex). Returns None when there is no answer or it is empty.
    """
    text = _as_text(text)
    close = text.rfind(_ANSWER_CLOSE)
    open_ = text.rfind(_ANSWER_OPEN, 0, close) if close >= 0 else -1
    if open_ >= 0:
        answer = text[open_ + len(_ANSWER_OPEN) : close]
        answer = extract_boxed(answer) or answer
    else:
        answer = extract_boxed(text)
    answer = answer.strip() if answer is not None else ""
    return answer or None


# ----------------------------------------------------------------------------- arithmetic

_NUMBER_RE = re.compile(r"([+-]?)\s*([0-9]+(?:\.[0-9]+)?)(?:\s*/\s*([0-9]+))?")
_TOKEN_RE = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?)|([-+*/()]))")


class _Invalid(Exception):
    """The expression is not in the grammar or exceeds a limit."""


def parse_number(text: str) -> Fraction | None:
    """An integer, decimal or `a/b` literal (optional sign, spaces around) as an exact Fraction."""
    text = _as_text(text).strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    m = _NUMBER_RE.fullmatch(text)
    if m is None:
        return None
    sign, num, den = m.groups()
    value = Fraction(num)
    if den is not None:
        if int(den) == 0:
            return None
        value /= int(den)
    return -value if sign == "-" else value


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if text[pos:].strip():
                raise _Invalid
            break
        number, op = m.groups()
        if number is not None and len(number) > MAX_LITERAL_DIGITS:
            raise _Invalid
        tokens.append(number if number is not None else op)
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
    unary := '-' unary | atom; atom := NUMBER | '(' expr ')'."""

    def __init__(self, tokens: list[str], max_depth: int):
        self.tokens, self.pos, self.depth, self.max_depth = tokens, 0, 0, max_depth
        self.literals: list[Fraction] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Invalid
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            value = value * self.unary() if self.take() == "*" else value / self.unary()
        return value

    def unary(self) -> Fraction:
        self.depth += 1
        if self.depth > self.max_depth:
            raise _Invalid
        if self.peek() == "-":
            self.take()
            value = -self.unary()
        else:
            value = self.atom()
        self.depth -= 1
        return value

    def atom(self) -> Fraction:
        token = self.take()
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise _Invalid
            return value
        if token[0].isdigit():
            self.literals.append(Fraction(token))
            return self.literals[-1]
        raise _Invalid


def evaluate_expression(
    text: str, max_chars: int = MAX_EXPRESSION_CHARS, max_depth: int = MAX_EXPRESSION_DEPTH
) -> tuple[Fraction, list[Fraction]] | None:
    """Exact value of an arithmetic expression (+ - * /, parentheses, unary minus) and its literals.

    None if the text is not an expression, is too long or too deep, or divides by zero.
    """
    text = _as_text(text)
    if len(text) > max_chars:
        return None
    try:
        parser = _Parser(_tokenize(text), max_depth)
        value = parser.expr()
        if parser.pos != len(parser.tokens):
            return None
    except (_Invalid, ZeroDivisionError):
        return None
    return value, parser.literals


def check_countdown(
    expression: str, numbers: Sequence[int], target: int, use_all: bool = False
) -> bool:
    """Whether `expression` reaches `target` using each of `numbers` at most once.

    With `use_all`, each number must be used exactly once (the TinyZero rule, Pan et al. 2025);
    the default follows the Countdown game: a subset may be left unused.
    """
    result = evaluate_expression(expression)
    if result is None:
        return False
    value, literals = result
    available = sorted(Fraction(n) for n in numbers)
    used = sorted(literals)
    if use_all:
        counts_ok = used == available
    else:
        counts_ok = all(used.count(x) <= available.count(x) for x in set(used))
    return counts_ok and value == target


# ----------------------------------------------------------------------------- math-verify


def _as_latex(answer: str) -> str:
    """An already-extracted answer as LaTeX math for math-verify (Python `**` read as `^`)."""
    answer = answer.replace("**", "^")
    return answer if "$" in answer else f"${answer}$"


def _bounded(text: str) -> bool:
    """Whether an answer is shallow enough for sympy to parse in bounded time: brackets nested
    at most MAX_MATH_VERIFY_DEPTH deep, at most MAX_MATH_VERIFY_POWERS powers."""
    depth = deepest = 0
    for c in text:
        if c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth -= 1
    powers = text.count("^") + text.count("**")
    return deepest <= MAX_MATH_VERIFY_DEPTH and powers <= MAX_MATH_VERIFY_POWERS


def math_equal(pred: str, gold: str) -> bool:
    """Symbolic equality by math-verify (`math_verify.parse` / `verify`), guarded.

    Only short answers are checked, word answers (e.g. "True") are skipped because sympy reads
    them as products of symbols, and math-verify's own timeouts apply (they use SIGALRM, so in a
    non-main thread, where the time cannot be bounded, the check is skipped). Never raises.
    """
    pred, gold = _as_text(pred).strip(), _as_text(gold).strip()
    if not pred or not gold or max(len(pred), len(gold)) > MAX_MATH_VERIFY_CHARS:
        return False
    if not (_bounded(pred) and _bounded(gold)):
        return False
    if gold.replace(" ", "").isalpha() or threading.current_thread() is not threading.main_thread():
        return False
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = parse(_as_latex(gold), parsing_timeout=1)
        pred_parsed = parse(_as_latex(pred), parsing_timeout=1)
        return bool(
            gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=1)
        )
    except (Exception, TimeoutException):
        logging.getLogger(__name__).debug("math-verify failed", exc_info=True)
        return False


# ----------------------------------------------------------------------------- rewards


def format_reward(response: str | bytes, think_opened: bool = False) -> float:
    """1.0 iff the response is exactly `<think> ... </think> <answer> ... </answer>`, else 0.0.

    R1-Zero's format reward (DeepSeek-AI 2025, sec. 2.2.2), strict: one think block then one
    non-empty answer block, only whitespace before, between and after; a repeated, nested or
    unclosed tag scores 0. With `think_opened` the prompt already ended with `<think>`, so the
    response starts inside the think block and must not open another.
    """
    text = _as_text(response)
    if not think_opened:
        text = text.lstrip()
        if not text.startswith(_THINK_OPEN):
            return 0.0
        text = text[len(_THINK_OPEN) :]
    if _THINK_OPEN in text or any(
        text.count(t) != 1 for t in (_THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)
    ):
        return 0.0
    think_end = text.find(_THINK_CLOSE)
    answer_start = text.find(_ANSWER_OPEN)
    answer_end = text.find(_ANSWER_CLOSE)
    if not think_end < answer_start < answer_end:
        return 0.0
    between = text[think_end + len(_THINK_CLOSE) : answer_start]
    answer = text[answer_start + len(_ANSWER_OPEN) : answer_end]
    after = text[answer_end + len(_ANSWER_CLOSE) :]
    return float(not between.strip() and not after.strip() and bool(answer.strip()))


def overlong_penalty(num_tokens, max_len: int, cache_len: int) -> np.ndarray:
    """Soft overlong punishment of DAPO (Yu et al. 2025, sec. 3.4), per response length in tokens.

    0 if L <= L_max - L_cache; (L_max - L_cache - L) / L_cache in the buffer; -1 beyond L_max.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got {cache_len=}, {max_len=}")
    length = np.asarray(num_tokens, dtype=np.float64)
    soft = max_len - cache_len
    penalty = np.where(length <= soft, 0.0, (soft - length) / cache_len)
    return np.where(length > max_len, -1.0, penalty).astype(np.float32)


def accuracy_reward(
    response: str | bytes, example: Example, task: Task, use_math_verify: bool = False
) -> float:
    """The task's verifier on the extracted answer, in [0, 1]; 0 when there is none.

    With `use_math_verify`, a math task's answer that math-verify finds equal to the reference
    also scores 1. A verifier that raises or returns a non-finite value scores 0.
    """
    answer = extract_answer(response)
    return 0.0 if answer is None else score_answer(answer, example, task, use_math_verify)


def score_answer(answer: str, example: Example, task: Task, use_math_verify: bool = False) -> float:
    """The task's verifier on an already extracted answer, clamped to [0, 1], never raising."""
    try:
        score = float(task.verify(answer, example))
    except Exception:
        logging.getLogger(__name__).debug("verifier raised", exc_info=True)
        score = 0.0
    score = min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0
    symbolic = use_math_verify and task.math_answer
    if symbolic and getattr(task, "numeric_answer", False) and not is_number(answer):
        symbolic = False  # "49 + 5" equals 54 but is the question, not an answer
    if score < 1.0 and symbolic and math_equal(answer, example.answer):
        score = 1.0
    return score


_NUMBER = re.compile(
    r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?"  # 54, -4, 46.0, .5, 3/4
    r"|[-+]?\\frac\{\d+\}\{\d+\}"  # \frac{3}{4}
)


def is_number(answer: str) -> bool:
    """An answer written as one number (integer, decimal, fraction), spaces ignored."""
    return _NUMBER.fullmatch(answer.replace(" ", "")) is not None


def compute_rewards(
    responses: Sequence[str | bytes],
    examples: Sequence[Example],
    task: Task,
    *,
    think_opened: bool = False,
    use_math_verify: bool = False,
    num_tokens=None,
    max_len: int | None = None,
    cache_len: int | None = None,
    accuracy_weight: float = 1.0,
    format_weight: float = 0.1,
    overlong_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """Per-response rewards {accuracy, format, overlong, total} as float32 arrays.

    total = accuracy_weight * accuracy + format_weight * format + overlong_weight * overlong; the
    default format weight 0.1 is TinyZero's format score.
    The overlong term is applied when `num_tokens` (response lengths in tokens), `max_len` and
    `cache_len` are given, and is 0 otherwise.
    """
    if len(responses) != len(examples):
        raise ValueError(f"{len(responses)} responses for {len(examples)} examples")
    accuracy = np.array(
        [
            accuracy_reward(r, e, task, use_math_verify)
            for r, e in zip(responses, examples, strict=True)
        ],
        dtype=np.float32,
    )
    fmt = np.array([format_reward(r, think_opened) for r in responses], dtype=np.float32)
    overlong = np.zeros_like(accuracy)
    if num_tokens is not None and max_len is not None and cache_len is not None:
        overlong = overlong_penalty(num_tokens, max_len, cache_len)
        if overlong.shape != accuracy.shape:
            raise ValueError(f"num_tokens has shape {overlong.shape}, need {accuracy.shape}")
    total = accuracy_weight * accuracy + format_weight * fmt + overlong_weight * overlong
    return {
        "accuracy": accuracy,
        "format": fmt,
        "overlong": overlong,
        "total": total.astype(np.float32),
    }
