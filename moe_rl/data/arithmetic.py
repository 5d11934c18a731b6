"""The embedded pretraining text: arithmetic and Countdown puzzles, generated from a seed.

A model pretrained on it should become a usable *base* model for R1-Zero RL: it has seen the
numbers, the puzzle statements and the `<think> ... </think> <answer> ... </answer>` format,
but imperfectly. So the documents mix worked reasoning (with failed Countdown attempts, i.e.
search), bare answers, prose and worksheets; only a minority use the think/answer tags, and
about a quarter are confidently wrong (a slip in one step, carried to the end), like web text.

Kinds (share, default mix): addition .12, subtraction .10, multiplication .11, mixed
expressions with precedence .10, chains of sums .12, missing number .05, Countdown .40 (half
with numbers up to 10 and targets up to 100, half up to 99 and 999). Styles: bare answer .30,
worked steps .35, think/answer tags .15 (half inside the R1-Zero template), prose .10,
worksheet .10. The 'r1' mix (MIXES) is the R1-Zero base model's: mostly additions and drills of
one-digit facts, more than half in the think/answer format, half of those a bare guess.
The phrasings include those of the RL tasks (`moe_rl.data.tasks`): "Compute 12 + 34 * 5",
"Using the numbers [3, 5, 7], create an equation that equals 22. ...", the R1-Zero and
"Question: ...\nAnswer:" prompts. Documents are tens to a few hundred bytes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

from moe_rl.data.countdown_docs import compare_facts, countdown, countdown_search, step_facts
from moe_rl.data.draws import Random, Solved, choice, number, slip, weighted

# Half of the think-style documents are the R1-Zero prompt (R1 paper, Table 1) and a response.
from moe_rl.data.tasks.templates import R1_ZERO_TEMPLATE

KINDS = {
    "addition": 0.12,
    "subtraction": 0.10,
    "multiplication": 0.11,
    "expression": 0.10,
    "chain": 0.12,
    "missing": 0.05,
    "countdown": 0.40,
}
STYLES = {"answer": 0.30, "worked": 0.35, "think": 0.15, "prose": 0.10, "worksheet": 0.10}
WRONG_RATE = 0.25


def _running(
    rng: Random, start: int, moves: list[tuple[str, int]], wrong: bool
) -> tuple[list[str], int]:
    """Steps 'x op y = z' applying moves in turn; if wrong, one result slips and is carried on."""
    bad = rng.below(len(moves)) if wrong else -1
    steps, value = [], start
    for i, (op, y) in enumerate(moves):
        new = value + y if op == "+" else value - y if op == "-" else value * y
        if i == bad:
            new = slip(rng, new)
        steps.append(f"{value} {op} {y} = {new}.")
        value = new
    return steps, value


def _place_parts(n: int) -> list[int]:
    """385 -> [300, 80, 5]: the non-zero place values, largest first."""
    digits = str(n)
    parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits)]
    return [p for p in parts if p] or [0]


_PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands")


def _column_addition(
    rng: Random, a: int, b: int, wrong: bool, so_far: bool = False
) -> tuple[list[str], int]:
    """School column addition, right to left; if wrong, one column is miscounted.

    so_far: each column also states the digits written so far ("..., write 2 carry 1, so far
    32."), and a final carry its own step ("Carried 1: 132."): every step then copies from the
    line before it, and the answer is the last line's number, instead of the written digits
    read back in reverse order (the step a small model gets wrong most)."""
    da, db = str(a)[::-1], str(b)[::-1]
    columns = max(len(da), len(db))
    bad = rng.below(columns) if wrong else -1
    steps, carry, total, written = [], 0, 0, ""
    for i in range(columns):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        if i == bad:
            s = s + 1 if s < 18 else s - 1
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        digit, carry = s % 10, s // 10
        written = f"{digit}{written}"
        note = f"write {digit} carry {carry}" if carry else f"write {digit}"
        if so_far:
            note += f", so far {written}"
        steps.append(f"{_PLACES[i].capitalize()}: {terms} = {s}, {note}.")
        total += digit * 10**i
    total += carry * 10**columns
    if so_far and carry:
        steps.append(f"Carried {carry}: {total}.")
    return steps, total


def addition(
    rng: Random, wrong: bool, restate: bool = False, column: float = 0.5, so_far: bool = False
) -> Solved:
    """a + b worked by columns (probability `column`) or by a running sum of b's place parts."""
    a, b = number(rng, rng.integers(1, 5)), number(rng, rng.integers(1, 4))
    if rng.random() < column:
        steps, result = _column_addition(rng, a, b, wrong, so_far)
        if restate:  # copy the operands next to the work: easier for a small model to attend
            steps.insert(0, f"{a} + {b} by columns.")
    else:
        steps, result = _running(rng, a, [("+", p) for p in _place_parts(b)], wrong)
    question = choice(
        rng,
        (
            f"What is {a} + {b}?",
            f"Compute {a} + {b}.",
            f"Calculate {a} plus {b}.",
            f"Find the sum of {a} and {b}.",
            f"{a} + {b} = ?",
            f"Add {a} and {b}.",
        ),
    )
    fact = choice(rng, (f"{a} + {b} = {result}", f"{a} plus {b} is {result}."))
    return Solved(question, steps, str(result), fact)


def facts(rng: Random, wrong: bool) -> Solved:
    """A drill of one-digit addition facts, with and without a carried 1 ("7 + 8 + 1 = 16"):
    the steps of every column addition. If wrong, one of them is off by one."""
    n = rng.integers(4, 9)
    bad = rng.below(n) if wrong else -1
    lines = []
    for i in range(n):
        x, y, c = rng.below(10), rng.below(10), rng.below(2)
        s = x + y + c
        s = slip(rng, s) if i == bad else s
        lines.append(f"{x} + {y}" + (" + 1" if c else "") + f" = {s}")
    title = choice(rng, ("Addition facts:", "Quick sums:", "Drill:", "Mental math:"))
    text = title + "\n" + "\n".join(lines)
    return Solved(text, [], lines[-1].rsplit(" ", 1)[-1], text)


def subtraction(rng: Random, wrong: bool) -> Solved:
    a, b = number(rng, rng.integers(2, 5)), number(rng, rng.integers(1, 4))
    a, b = max(a, b), min(a, b)
    steps, result = _running(rng, a, [("-", p) for p in _place_parts(b)], wrong)
    question = choice(
        rng,
        (
            f"What is {a} - {b}?",
            f"Compute {a} - {b}.",
            f"Subtract {b} from {a}.",
            f"What is {a} minus {b}?",
            f"{a} - {b} = ?",
            f"How much is left if you take {b} away from {a}?",
        ),
    )
    fact = choice(rng, (f"{a} - {b} = {result}", f"{a} minus {b} is {result}."))
    return Solved(question, steps, str(result), fact)


def multiplication(rng: Random, wrong: bool) -> Solved:
    a, b = number(rng, rng.integers(1, 4)), number(rng, rng.integers(1, 3))
    if b >= 10:  # split the multiplier: 47 * 38 = 47 * 30 + 47 * 8
        parts = _place_parts(b)
        products = [a * p for p in parts]
        bad = rng.below(len(parts)) if wrong else -1
        products = [slip(rng, q) if i == bad else q for i, q in enumerate(products)]
        split = " + ".join(f"{a} * {p}" for p in parts)
        steps = [f"{a} * {b} = {split}."]
        steps += [f"{a} * {p} = {q}." for p, q in zip(parts, products, strict=True)]
        result = sum(products)
        steps.append(" + ".join(map(str, products)) + f" = {result}.")
    else:  # split the multiplicand: 47 * 8 = 40 * 8 + 7 * 8
        parts = _place_parts(a)
        products = [p * b for p in parts]
        bad = rng.below(len(parts)) if wrong else -1
        products = [slip(rng, q) if i == bad else q for i, q in enumerate(products)]
        result = sum(products)
        split = " + ".join(f"{p} * {b}" for p in parts)
        steps = [f"{a} * {b} = {split} = " + " + ".join(map(str, products)) + f" = {result}."]
    question = choice(
        rng,
        (
            f"What is {a} * {b}?",
            f"Compute {a} * {b}.",
            f"Multiply {a} by {b}.",
            f"What is {a} times {b}?",
            f"{a} * {b} = ?",
            f"Find the product of {a} and {b}.",
        ),
    )
    fact = choice(rng, (f"{a} * {b} = {result}", f"{a} times {b} is {result}."))
    return Solved(question, steps, str(result), fact)


def expression(rng: Random, wrong: bool) -> Solved:
    """2-4 two-digit numbers joined by + - *: products first, then left to right."""
    values = [rng.integers(0, 100) for _ in range(rng.integers(2, 5))]
    ops = [choice(rng, "+-*") for _ in values[1:]]
    expr = str(values[0]) + "".join(f" {op} {v}" for op, v in zip(ops, values[1:], strict=True))
    bad = rng.below(len(ops)) if wrong else -1
    steps, terms, signs = [], [values[0]], []
    for op, v in zip(ops, values[1:], strict=True):  # products first
        if op == "*":
            product = terms[-1] * v
            product = slip(rng, product) if len(steps) == bad else product
            steps.append(f"{terms[-1]} * {v} = {product}.")
            terms[-1] = product
        else:
            terms.append(v)
            signs.append(op)
    result = terms[0]
    for op, v in zip(signs, terms[1:], strict=True):  # then sums, left to right
        new = result + v if op == "+" else result - v
        new = slip(rng, new) if len(steps) == bad else new
        steps.append(f"{result} {op} {v} = {new}.")
        result = new
    if len(steps) > 1:
        steps.insert(0, "Multiplication first." if "*" in ops else "Left to right.")
    question = choice(
        rng, (f"Compute {expr}", f"What is {expr}?", f"Evaluate {expr}.", f"{expr} = ?")
    )
    return Solved(question, steps, str(result), f"{expr} = {result}")


def chain(rng: Random, wrong: bool) -> Solved:
    """A running total over 3-6 small numbers, as a sum or as a little story."""
    n = rng.integers(3, 7)
    values = [rng.integers(1, 100) for _ in range(n)]
    if rng.random() < 0.6:
        moves = [("+", v) for v in values[1:]]
        expr = " + ".join(map(str, values))
        question = choice(
            rng,
            (
                f"What is {expr}?",
                f"Add up {', '.join(map(str, values[:-1]))} and {values[-1]}.",
                f"Compute {expr}.",
                f"{expr} = ?",
            ),
        )
    else:  # a story with gains and losses; the total never goes negative
        moves, total = [], values[0]
        for v in values[1:]:
            op = "-" if v <= total and rng.random() < 0.4 else "+"
            total = total + v if op == "+" else total - v
            moves.append((op, v))
        expr = str(values[0]) + "".join(f" {op} {v}" for op, v in moves)
        thing = choice(rng, ("apples", "marbles", "coins", "stickers", "books", "points"))
        name = choice(rng, ("Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana"))
        events = [f"{'gets' if op == '+' else 'gives away'} {v}" for op, v in moves]
        question = (
            f"{name} has {values[0]} {thing}, then {', then '.join(events)}. "
            f"How many {thing} does {name} have now?"
        )
    steps, result = _running(rng, values[0], moves, wrong)
    return Solved(question, steps, str(result), f"{expr} = {result}")


def missing(rng: Random, wrong: bool) -> Solved:
    """Find the missing number: solve a one-step equation by the inverse operation."""
    form = rng.below(3)
    if form == 0:
        x, b = number(rng, 2), number(rng, rng.integers(1, 3))
        puzzle, inverse, c = "? + {b} = {c}", "{c} - {b}", x + b
    elif form == 1:
        b, c = number(rng, rng.integers(1, 3)), number(rng, 2)
        puzzle, inverse, x = "? - {b} = {c}", "{c} + {b}", b + c
    else:
        x, b = rng.integers(2, 13), rng.integers(2, 13)
        puzzle, inverse, c = "{b} * ? = {c}", "{c} / {b}", x * b
    puzzle, inverse = puzzle.format(b=b, c=c), inverse.format(b=b, c=c)
    answer = slip(rng, x) if wrong else x
    question = choice(
        rng, (f"Find the missing number: {puzzle}", f"What number goes in the blank? {puzzle}")
    )
    steps = [f"The missing number is {inverse} = {answer}."]
    return Solved(question, steps, str(answer), puzzle.replace("?", str(answer)))


_MAKERS = {
    "facts": facts,
    "step_facts": step_facts,
    "compare_facts": compare_facts,
    "countdown_search": countdown_search,
    "addition": addition,
    "subtraction": subtraction,
    "multiplication": multiplication,
    "expression": expression,
    "chain": chain,
    "missing": missing,
    "countdown": countdown,
}
_LABELS = (("Question:", "Answer:"), ("Q:", "A:"), ("Problem:", "Answer:"), ("User:", "Assistant:"))


@dataclasses.dataclass(frozen=True)
class Mix:
    """A document mix: kind and style weights, and two options of the think-style documents.

    short_think: the fraction of think-style documents whose think skips the work and only
      states the result ("<think> 47 + 38 = 85. </think>"), as people do for problems they
      find easy. A model that cannot add in its head gets these wrong more often than the
      worked ones: the choice between a short guess and worked steps is there for RL to learn.
    restate: column additions begin by restating the operands ("47 + 38 by columns.").
    column: the fraction of additions worked by columns; the rest add b's place parts to a
      ("47 + 30 = 77. 77 + 8 = 85.").
    so_far: column additions state the digits written so far in every column (see
      `_column_addition`).
    wrong_rate: the fraction of documents with a mistake carried to the end.
    template: the fraction of think-style documents inside the R1-Zero prompt; the rest use
      "Question: ... Answer:" labels. The prompt is ~120 tokens that a model learns to predict
      within a hundred steps, so beyond that it only costs compute.
    compare: Countdown searches compare each try's value with the target side by side
      (`countdown_docs.countdown_search`).
    patient: Countdown searches go on to a hit or to their last try (`countdown_search`).
    patience: Countdown writers go on after a miss with this probability (0: off; see
      `countdown_search`), up to max_tries.
    max_tries: the most tries a Countdown search makes.
    """

    kinds: dict[str, float]
    styles: dict[str, float]
    short_think: float = 0.0
    restate: bool = False
    column: float = 0.5
    so_far: bool = False
    template: float = 0.5
    wrong_rate: float = WRONG_RATE
    compare: bool = False
    patient: bool = False
    patience: float = 0.0
    max_tries: int = 6


# Named document mixes. 'r1' is the base model's corpus for experiments/r1_zero.py: mostly
# additions (the RL task), more than half in the think/answer format, with short and worked
# thinks. Most additions go by columns: a base's R1-Zero run learns only if its column method
# is more accurate than its guesses, and with half the additions by columns some seeds' bases
# got 3% of train-split questions right by columns and 10% by a short guess (docs/results/
# r1_zero/README.md); GRPO then made them better guessers.
MIXES = {
    "default": Mix(KINDS, STYLES),
    "r1": Mix(
        {"addition": 0.6, "facts": 0.1, "subtraction": 0.1, "chain": 0.05,
         "multiplication": 0.05, "expression": 0.04, "missing": 0.03, "countdown": 0.03},
        {"answer": 0.1, "worked": 0.25, "think": 0.55, "prose": 0.05, "worksheet": 0.05},
        short_think=0.5,
        restate=True,
        column=0.8,
        so_far=True,
        template=0.15,
    ),
    # Countdown pilot 3's corpus (experiments/r1_zero_countdown.py's until pilot 7 replaced it;
    # that one is 'countdown_patient' below): puzzles of the RL task's
    # size solved by trial (`countdown_search`: 1-6 tries, each worked and checked against the
    # target) and drills of the tries' steps. No bare claims in the thinks, and fewer mistakes
    # than the other mixes: with a third of the thinks a bare claim and a quarter of the
    # documents wrong, a base got 76% of its steps right, checked its tries wrongly and GRPO
    # moved it to the shorter bare claims (docs/results/r1_zero_countdown/README.md).
    "countdown": Mix(
        {"countdown_search": 0.6, "step_facts": 0.3, "addition": 0.05, "subtraction": 0.05},
        {"answer": 0.1, "worked": 0.2, "think": 0.6, "prose": 0.05, "worksheet": 0.05},
        template=0.15,
        wrong_rate=0.1,
    ),
    # Countdown pilots 5-6: the searches' verdicts compare side by side ("36 vs 22: no"),
    # with balanced drills of such comparisons (docs/results/r1_zero_countdown/README.md).
    "countdown_compare": Mix(
        {"countdown_search": 0.6, "step_facts": 0.2, "compare_facts": 0.1, "addition": 0.05,
         "subtraction": 0.05},
        {"answer": 0.1, "worked": 0.2, "think": 0.6, "prose": 0.05, "worksheet": 0.05},
        template=0.15,
        wrong_rate=0.1,
        compare=True,
    ),
}  # fmt: skip
# experiments/r1_zero_countdown.py's corpus (pilot 7): pilot 6's with searches that never stop
# early (a hit or 6 tries): pilot 6's base gave up after ~2 tries
# (docs/results/r1_zero_countdown/README.md).
MIXES["countdown_patient"] = dataclasses.replace(MIXES["countdown_compare"], patient=True)
# Countdown pilot 15: 'countdown_patient' with twice the comparison drills (a fifth of the
# documents, taken from the step drills): the ninth session's base called "found it" on only
# 47% of its hits (docs/results/r1_zero_countdown/README.md).
MIXES["countdown_drilled"] = dataclasses.replace(
    MIXES["countdown_patient"],
    kinds={
        "countdown_search": 0.6,
        "step_facts": 0.1,
        "compare_facts": 0.2,
        "addition": 0.05,
        "subtraction": 0.05,
    },
)

# Countdown pilot 18: 'countdown_drilled' whose writers give up early and sometimes search
# long: after each miss one goes on with probability 0.8, up to 12 tries (mean ~3.7 tries;
# 8.6% of the writers would try 12). Random tries over the numbers hit within 6 tries in ~41%
# of the puzzles and within 12 in ~65%: the corpus's searches stop short of what patience
# reaches, which is what RL can learn (docs/results/r1_zero_countdown/README.md).
MIXES["countdown_long"] = dataclasses.replace(
    MIXES["countdown_drilled"], patient=False, patience=0.8, max_tries=12
)


def document(rng: Random, mix: str = "default") -> str:
    """One random document: a kind of problem rendered in a style, wrong WRONG_RATE of the time."""
    m = MIXES[mix]
    kind = weighted(rng, m.kinds)
    make = _MAKERS[kind]
    if kind == "addition":
        make = functools.partial(addition, restate=m.restate, column=m.column, so_far=m.so_far)
    if kind == "countdown_search":
        make = functools.partial(
            countdown_search,
            compare=m.compare,
            patient=m.patient,
            patience=m.patience,
            max_tries=m.max_tries,
        )
    if kind in ("facts", "step_facts", "compare_facts"):  # a drill is its own document, in no style
        return make(rng, rng.random() < m.wrong_rate).fact
    style = weighted(rng, m.styles)
    if style == "worksheet":
        lines = [make(rng, rng.random() < m.wrong_rate).fact for _ in range(rng.integers(3, 7))]
        title = choice(rng, ("Practice:", "Worksheet", "Exercises", "Check these:"))
        return title + "\n" + "\n".join(lines)
    p = make(rng, rng.random() < m.wrong_rate)
    if style == "prose":
        return p.fact
    if style == "think":
        steps = p.steps
        if m.short_think and rng.random() < m.short_think:
            steps = [p.fact if p.fact.endswith(".") else p.fact + "."]
        reply = f"<think> {' '.join(steps)} </think> <answer> {p.answer} </answer>"
        r = rng.random()
        if r < m.template:
            prompt = R1_ZERO_TEMPLATE.format(prompt=p.question.rstrip("."))  # it adds the "."
            return f"{prompt} {reply}"
        plain = r < m.template + (1 - m.template) / 2
        return f"Question: {p.question}\nAnswer: {reply}" if plain else f"{p.question}\n{reply}"
    ask, tell = choice(rng, _LABELS) if rng.random() < 0.5 else _LABELS[0]
    if style == "answer":
        return f"{ask} {p.question}\n{tell} {p.answer}"
    sep = "\n" if rng.random() < 0.5 else " "
    end = choice(rng, (f"So the answer is {p.answer}.", f"The answer is {p.answer}."))
    return f"{ask} {p.question}\n{tell} {sep.join(p.steps)}{sep}{end}"


def documents(num: int, seed: int | Sequence[int], mix: str = "default") -> Iterator[str]:
    """`num` documents, the same for the same seed (numpy's PCG64 stream)."""
    rng = Random(seed)
    for _ in range(num):
        yield document(rng, mix)
