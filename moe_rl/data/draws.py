"""Seeded draws for the generated corpora: a fast uniform source and the helpers built on it.

The arithmetic, Countdown and facts corpora (`arithmetic`, `countdown_docs`, `facts`) draw
every choice through `Random`, so a document is a function of its seed.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class Solved:
    """One problem rendered in parts; the styles assemble documents from them."""

    question: str
    steps: list[str]  # worked reasoning, one sentence each
    answer: str  # what goes after "Answer:" or inside <answer>
    fact: str  # one line stating the result, for prose and worksheets


class Random:
    """Uniform draws from a seeded numpy Generator, fetched in blocks: one scalar numpy call
    costs microseconds, and a document needs dozens of draws."""

    def __init__(self, seed: int | Sequence[int]):
        self._rng = np.random.default_rng(seed)
        self._block: list[float] = []

    def random(self) -> float:
        if not self._block:
            self._block = self._rng.random(4096).tolist()[::-1]
        return self._block.pop()

    def below(self, n: int) -> int:
        """Uniform in 0..n-1."""
        i = int(self.random() * n)
        return i if i < n else n - 1  # u * n can round up to n

    def integers(self, low: int, high: int) -> int:
        """Uniform in low..high-1, like numpy's."""
        return low + self.below(high - low)


def choice(rng: Random, seq: Sequence):
    return seq[rng.below(len(seq))]


def weighted(rng: Random, table: dict[str, float]) -> str:
    names = list(table)
    cdf = list(itertools.accumulate(table.values()))
    return names[min(bisect.bisect(cdf, rng.random() * cdf[-1]), len(names) - 1)]


def number(rng: Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.integers(low, 10**digits)


def slip(rng: Random, value: int) -> int:
    """A plausible arithmetic mistake: off by one, by ten, or by a few."""
    delta = choice(rng, (1, 1, 2, 10, 10, 100 if value >= 100 else 3))
    return value + delta if rng.random() < 0.5 or value - delta < 0 else value - delta
