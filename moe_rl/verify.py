"""Reading and checking answers: extraction from a response, exact arithmetic, Countdown
expressions and math-verify, all total functions of untrusted text.

Model output is untrusted input: every function here takes any string and returns a value or
None/False, never raises, and nothing the model wrote reaches `eval`/`exec`. Arithmetic
expressions are read by a small recursive-descent parser with exact `fractions.Fraction`
arithmetic and hard length/depth limits. Tasks (moe_rl/data/tasks) verify with these;
`moe_rl.rewards` turns verdicts into rewards.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from fractions import Fraction

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


_NUMBER = re.compile(
    r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?"  # 54, -4, 46.0, .5, 3/4
    r"|[-+]?\\frac\{\d+\}\{\d+\}"  # \frac{3}{4}
)


def is_number(answer: str) -> bool:
    """An answer written as one number (integer, decimal, fraction), spaces ignored."""
    return _NUMBER.fullmatch(answer.replace(" ", "")) is not None
