"""`rg:<name>`: the procedural datasets of reasoning-gym, verified by their own `score_answer`."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import logging
import math
import re
from collections.abc import Iterator

from moe_rl.data.tasks.base import Example, GeneratedTask
from moe_rl.verify import check_countdown

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
# Scorers that are wrong, found by fuzzing every dataset's score_answer (tests/test_tasks.py):
# refused, with the reason, or wrapped.
REFUSED_SCORERS = {
    "game_of_life_halting": "its score_answer gives 1.0 to any non-empty answer",
}
# complex_arithmetic's scorer parses 'nan' as a complex number equal to every answer.
FINITE_ONLY = frozenset({"complex_arithmetic"})
_NON_FINITE = re.compile(r"nan|inf", re.IGNORECASE)
MAX_ANSWER_CHARS = 10_000  # longer answers score 0 without calling the dataset's scorer
# Items per reasoning-gym dataset object: some datasets build all their items up front (acre,
# gsm_symbolic, list_functions, word_ladder), so an "endless" size hangs or runs out of memory;
# the stream chains datasets of this size, each from its own derived seed.
CHUNK = 64


def available() -> list[str]:
    """Names of the registered reasoning-gym datasets."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(GeneratedTask):
    """A reasoning-gym dataset as a task; `config` goes to the dataset's config dataclass.

    reasoning-gym derives item i of seed s from `Random(s + i)`, so nearby seeds give shifted
    copies of one stream: the user's seed is hashed (per chunk of CHUNK items) before use, and
    train/test are split by a hash of the question like the built-in tasks.

    partial_credit: the scorer's own value in [0, 1]; by default only a full score counts (1.0,
    else 0.0), as R1-Zero's accuracy reward is binary and many scorers give 0.01-0.25 to any
    answer at all (a formatting credit, found by fuzzing them).
    """

    def __init__(
        self,
        dataset: str,
        test_fraction: float = 0.1,
        allow_eval_verifier: bool = False,
        partial_credit: bool = False,
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
        if dataset in REFUSED_SCORERS:
            raise ValueError(
                f"reasoning-gym's {dataset!r} cannot be used as a verifiable task: "
                f"{REFUSED_SCORERS[dataset]}"
            )
        self.partial_credit = partial_credit
        self.name, self.dataset, self.config = f"rg:{dataset}", dataset, config
        self._scorer = self._make(0, 1).score_answer  # also validates the config early

    def _make(self, seed: int, size: int):
        import reasoning_gym

        return reasoning_gym.create_dataset(self.dataset, seed=seed, size=size, **self.config)

    def candidates(self, seed: int) -> Iterator[Example]:
        for chunk in itertools.count():
            digest = hashlib.blake2b(f"rg:{seed}:{chunk}".encode(), digest_size=4).digest()
            data = self._make(int.from_bytes(digest, "big"), CHUNK)
            for i in range(CHUNK):
                entry = data[i]
                yield Example(entry["question"], str(entry["answer"]), entry["metadata"])

    def verify(self, answer: str, example: Example) -> float:
        if self.dataset in COUNTDOWN_LIKE:
            target = example.meta.get("target", 24)
            return float(check_countdown(answer, example.meta["numbers"], target, use_all=True))
        if len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        if self.dataset in FINITE_ONLY and _NON_FINITE.search(answer):
            return 0.0
        entry = {"question": example.question, "answer": example.answer, "metadata": example.meta}
        try:
            score = float(self._scorer(answer, entry))
        except Exception:
            logging.getLogger(__name__).debug("reasoning-gym scorer raised", exc_info=True)
            return 0.0
        if not math.isfinite(score):
            return 0.0
        if not self.partial_credit:
            return 1.0 if score >= 1.0 - 1e-9 else 0.0
        return min(max(score, 0.0), 1.0)
