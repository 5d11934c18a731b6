"""Sampling-based evaluation estimators: pass@k, pass@1 over k samples, maj@k."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from moe_rl.rewards import parse_number


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
    """Unbiased pass@k from n samples of which c are correct, elementwise over arrays.

    Chen et al. 2021, eq. 1: 1 - C(n-c, k) / C(n, k), computed as the stable product
    1 - prod_{i=n-c+1}^{n} (1 - k / i); it is exactly 1 when n - c < k.
    """
    n, c = np.broadcast_arrays(np.asarray(num_samples), np.asarray(num_correct))
    if k < 1 or np.any(n < k) or np.any(c < 0) or np.any(c > n):
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got {k=}, n={n}, c={c}")
    out = np.ones(n.shape, dtype=np.float64)
    for idx in np.ndindex(n.shape):
        if n[idx] - c[idx] >= k:
            out[idx] = 1.0 - np.prod(1.0 - k / np.arange(n[idx] - c[idx] + 1, n[idx] + 1))
    return out


def pass_at_1(scores: Sequence[Sequence[float]]) -> float:
    """Mean over problems of the mean score of each problem's k samples (DeepSeek-R1's pass@1)."""
    if len(scores) == 0:
        raise ValueError("no problems")
    return float(np.mean([np.mean(s) for s in scores]))


def normalize_answer(answer: str | None) -> str | None:
    """Voting key of an extracted answer: whitespace collapsed, numbers as exact fractions.

    So `0.75`, `3/4` and ` 3 / 4 ` vote together. None or blank answers get None (no vote).
    """
    if answer is None or not answer.strip():
        return None
    number = parse_number(answer)
    return str(number) if number is not None else " ".join(answer.split())


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer by `normalize_answer`, returned as first written; None if none.

    Ties go to the answer whose first occurrence comes earliest in the sample order.
    """
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for answer in answers:
        key = normalize_answer(answer)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, answer)
    if not counts:
        return None
    best = max(counts, key=counts.get)  # max keeps the first key (insertion order) among ties
    return first[best]


def maj_at_k(answers: Sequence[str | None], verify: Callable[[str], float]) -> float:
    """maj@k (Wang et al. 2023, self-consistency): the verifier's score of the majority answer."""
    voted = majority_vote(answers)
    return 0.0 if voted is None else float(verify(voted))
