"""Cold-start data for the R1 pipeline (DeepSeek-R1 sec. 2.3.1): a few thousand long, readable
reasoning examples that fine-tune the base before RL, so that RL starts from a model that
already writes its reasoning in a clean, fixed form.

DeepSeek collected theirs by few-shot prompting with long CoTs, asking models to write detailed
answers with reflection and verification, gathering R1-Zero outputs and refining them by hand;
their format was a reasoning process followed by a summary. Ours are written by a program, for
the arithmetic task only: the question's sum worked out column by column as school teaches it
(`data/arithmetic.py`, the same sentences the pretraining corpus uses), then a one-line summary,
inside the R1 tags. They are always correct: no answer is sampled from a model.

    <think> 47 + 38 by columns. Ones: 7 + 8 = 15, write 5 carry 1. Tens: 4 + 3 + 1 = 8,
    write 8. So 47 + 38 = 85. </think> <answer> 85 </answer>
"""

from __future__ import annotations

import re

from moe_rl.data import arithmetic, draws
from moe_rl.data.tasks import Example
from moe_rl.data.tasks.templates import format_prompt

_SUM = re.compile(r"^\s*\d+(\s*\+\s*\d+)+\s*$")


def worked_sum(expression: str) -> tuple[list[str], int]:
    """(sentences, total) of a sum of non-negative integers ("47 + 38 + 5"), added left to
    right, each pair by columns, with a summary sentence at the end."""
    if not _SUM.match(expression):
        raise ValueError(
            f"cold-start examples are written for sums of non-negative integers; got "
            f"{expression!r} (config.task: the arithmetic task with operators='+')"
        )
    terms = [int(t) for t in expression.split("+")]
    rng = draws.Random(0)  # only read by a deliberately wrong column: never here
    steps, total = [], terms[0]
    for term in terms[1:]:
        columns, result = arithmetic._column_addition(rng, total, term, wrong=False)
        steps += [f"{total} + {term} by columns.", *columns]
        total = result
    shown = " + ".join(str(t) for t in terms)
    steps.append(f"So {shown} = {total}.")
    return steps, total


def completion(expression: str, think_opened: bool) -> str:
    """The response to the prompt: the worked think, then the answer, in the R1 format."""
    steps, total = worked_sum(expression)
    body = f" {' '.join(steps)} </think> <answer> {total} </answer>"
    return body if think_opened else " <think>" + body


def cold_start_rows(
    examples: list[Example], template: str, think_opened: bool, chat_template: str | None = None
) -> list[dict]:
    """JSONL rows {"prompt", "completion", "question", "reference"} for `lm.read_pairs`; every
    completion's answer equals the example's reference answer."""
    rows = []
    for ex in examples:
        if "expression" not in ex.meta:
            raise ValueError(
                f"cold-start examples need the arithmetic task's questions; {ex.question!r} has "
                "no expression (config.task.name must be 'arithmetic')"
            )
        text = completion(ex.meta["expression"], think_opened)
        rows.append(
            {
                "prompt": format_prompt(template, ex.question, chat_template, think_opened),
                "completion": text,
                "question": ex.question,
                "reference": ex.answer,
            }
        )
    return rows
