"""Rule-based rewards for R1-Zero RL: format, answer accuracy (a task's verdict), length.

Every reward is a total function (any string in, a finite float out, never an exception);
reading and checking the answer is `moe_rl.verify`, whose names are part of this module's
interface too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moe_rl.verify import (  # noqa: F401 - re-exported: rewards.extract_answer etc.
    _ANSWER_CLOSE,
    _ANSWER_OPEN,
    _THINK_CLOSE,
    _THINK_OPEN,
    MAX_EXPRESSION_CHARS,
    MAX_EXPRESSION_DEPTH,
    MAX_LITERAL_DIGITS,
    MAX_MATH_VERIFY_CHARS,
    MAX_MATH_VERIFY_DEPTH,
    MAX_MATH_VERIFY_POWERS,
    _as_text,
    check_countdown,
    evaluate_expression,
    extract_answer,
    extract_boxed,
    is_number,
    math_equal,
    parse_number,
)

if TYPE_CHECKING:
    from moe_rl.data.tasks import Example, Task


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
