"""Multi-digit arithmetic (`12 + 34 * 5`): the smallest task a tiny model can learn by RL."""

from __future__ import annotations

import random
from collections.abc import Iterator

from moe_rl.data.tasks.base import Example, GeneratedTask
from moe_rl.verify import (
    MAX_EXPRESSION_CHARS,
    MAX_LITERAL_DIGITS,
    evaluate_expression,
    parse_number,
)


class ArithmeticTask(GeneratedTask):
    """`Compute a op b op c ...` with integer operands, usual precedence, an integer answer.

    Knobs: operands have up to `num_digits` digits, `num_terms` of them, operators drawn from
    `operators` (a subset of "+-*"). The answer must be a plain number ("46", "-4", "46.0").
    """

    name = "arithmetic"
    math_answer = True
    numeric_answer = True

    def __init__(
        self,
        num_digits: int = 2,
        num_terms: int = 2,
        operators: str = "+",
        test_fraction: float = 0.1,
    ):
        super().__init__(test_fraction)
        if not 1 <= num_digits <= MAX_LITERAL_DIGITS or num_terms < 2:
            raise ValueError(
                f"need 1 <= num_digits <= {MAX_LITERAL_DIGITS} and num_terms >= 2, "
                f"got {num_digits=}, {num_terms=}"
            )
        if (num_digits + 3) * num_terms > MAX_EXPRESSION_CHARS:
            raise ValueError(f"expressions longer than {MAX_EXPRESSION_CHARS} chars are not parsed")
        if not operators or set(operators) - set("+-*"):
            raise ValueError(f"operators must be a non-empty subset of '+-*', got {operators!r}")
        self.num_digits, self.num_terms, self.operators = (
            num_digits,
            num_terms,
            sorted(set(operators)),
        )

    def candidates(self, seed: int) -> Iterator[Example]:
        rng = random.Random(seed)
        high = 10**self.num_digits - 1
        while True:
            parts = [str(rng.randint(0, high))]
            for _ in range(self.num_terms - 1):
                parts += [rng.choice(self.operators), str(rng.randint(0, high))]
            expression = " ".join(parts)
            value, _ = evaluate_expression(expression)
            yield Example(f"Compute {expression}", str(value), {"expression": expression})

    def verify(self, answer: str, example: Example) -> float:
        value = parse_number(answer)
        return float(value is not None and value == parse_number(example.answer))
