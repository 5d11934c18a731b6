"""`rg:<name>`: the procedural datasets of reasoning-gym, verified by their own `score_answer`."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import logging
import math
from collections.abc import Iterator

from moe_rl.data.tasks.base import Example, GeneratedTask
from moe_rl.rewards import check_countdown

# Audited for reasoning-gym 0.1.25: these datasets' `score_answer` pass the model's answer to
# eval() or sympy.parse_expr (which evals), so they are refused unless explicitly allowed.
EVAL_VERIFIERS = frozenset(
    {
        "binary_matrix",
        "intermediate_integration",
        "n_queens",
        "polynomial_multiplication",
        "simple_integration",
        "spiral_matrix",
        "string_insertion",
    }
)
# These two also use parse_expr; they are scored by our safe Countdown parser instead, with
# reasoning-gym's rule that every number is used exactly once (puzzle24's target is 24).
COUNTDOWN_LIKE = frozenset({"countdown", "puzzle24"})
MAX_ANSWER_CHARS = 10_000  # longer answers score 0 without calling the dataset's scorer
_SIZE = 2**31 - 1  # reasoning-gym datasets are indexed lazily; this is just "endless"


def available() -> list[str]:
    """Names of the registered reasoning-gym datasets."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(GeneratedTask):
    """A reasoning-gym dataset as a task; `config` goes to the dataset's config dataclass.

    reasoning-gym derives item i of seed s from `Random(s + i)`, so nearby seeds give shifted
    copies of one stream: the user's seed is hashed before use, and train/test are split by a
    hash of the question like the built-in tasks.
    """

    def __init__(
        self,
        dataset: str,
        test_fraction: float = 0.1,
        allow_eval_verifier: bool = False,
        **config,
    ):
        super().__init__(test_fraction)
        names = available()
        if dataset not in names:
            close = difflib.get_close_matches(dataset, names, n=5) or names[:10]
            raise ValueError(
                f"unknown reasoning-gym dataset {dataset!r}; {len(names)} are available, "
                f"e.g. {', '.join(close)} (see reasoning_gym.factory.DATASETS)"
            )
        if dataset in EVAL_VERIFIERS and not allow_eval_verifier:
            raise ValueError(
                f"reasoning-gym's {dataset!r} verifier evals the model's answer; pass "
                "allow_eval_verifier=True only if you accept running model output as code"
            )
        self.name, self.dataset, self.config = f"rg:{dataset}", dataset, config
        self._scorer = self._make(0, 1).score_answer  # also validates the config early

    def _make(self, seed: int, size: int):
        import reasoning_gym

        return reasoning_gym.create_dataset(self.dataset, seed=seed, size=size, **self.config)

    def candidates(self, seed: int) -> Iterator[Example]:
        digest = hashlib.blake2b(f"rg:{seed}".encode(), digest_size=4).digest()
        data = self._make(int.from_bytes(digest, "big"), _SIZE)
        for i in itertools.count():
            entry = data[i]
            yield Example(entry["question"], str(entry["answer"]), entry["metadata"])

    def verify(self, answer: str, example: Example) -> float:
        if self.dataset in COUNTDOWN_LIKE:
            target = example.meta.get("target", 24)
            return float(check_countdown(answer, example.meta["numbers"], target, use_all=True))
        if len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        entry = {"question": example.question, "answer": example.answer, "metadata": example.meta}
        try:
            score = float(self._scorer(answer, entry))
        except Exception:
            logging.getLogger(__name__).debug("reasoning-gym scorer raised", exc_info=True)
            return 0.0
        return min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0
