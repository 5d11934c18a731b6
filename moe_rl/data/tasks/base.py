"""What every verifiable task is: examples by split and seed, and a verifier."""

from __future__ import annotations

import abc
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    """One question, its reference answer, and what the verifier needs (numbers, target, ...)."""

    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def split_of(question: str, test_fraction: float) -> str:
    """'test' or 'train', a fixed function of the question text.

    Hashing the question makes the splits disjoint whatever the seeds: a question that can be
    generated in both streams is always assigned to the same one.
    """
    digest = hashlib.blake2b(question.encode("utf-8", "replace"), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") < test_fraction * 2**64 else "train"


class Task(abc.ABC):
    """A verifiable task: `stream`/`examples` yield Examples, `verify` scores an answer in [0, 1].

    `math_answer` says whether the reference answer is a mathematical value, so that a symbolic
    check (math-verify) may accept other forms of it; it is False where the answer is, e.g., an
    expression whose form matters (Countdown) or free text. `numeric_answer`: the answer must be
    a number, so a symbolic check compares only answers written as numbers ("0.75", "3/4",
    "\\frac{3}{4}"); an expression equal to it, such as the question copied ("49 + 5"), is not
    an answer.
    """

    name: str
    math_answer: bool = False
    numeric_answer: bool = False

    @abc.abstractmethod
    def stream(self, split: str, seed: int = 0) -> Iterator[Example]:
        """An endless, deterministic stream of examples of `split`."""

    @abc.abstractmethod
    def verify(self, answer: str, example: Example) -> float:
        """Score of an extracted answer in [0, 1]."""

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """The first `n` examples of the stream of `split` with `seed`."""
        return list(itertools.islice(self.stream(split, seed), n))


class GeneratedTask(Task):
    """A task generated procedurally; train/test are the two sides of a hash of the question."""

    max_rejections = 10_000  # consecutive candidates of the other split before giving up

    def __init__(self, test_fraction: float):
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction

    @abc.abstractmethod
    def candidates(self, seed: int) -> Iterator[Example]:
        """An endless deterministic stream of examples of either split."""

    def stream(self, split: str, seed: int = 0) -> Iterator[Example]:
        check_split(split)
        rejected = 0
        for example in self.candidates(seed):
            if split_of(example.question, self.test_fraction) == split:
                rejected = 0
                yield example
            else:
                rejected += 1
                if rejected >= self.max_rejections:
                    raise RuntimeError(
                        f"task {self.name!r}: no {split!r} example in {rejected} candidates; "
                        "the question space is too small for this test_fraction"
                    )
