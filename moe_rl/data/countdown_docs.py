"""Countdown in the embedded corpus: puzzles, worked solutions with failed tries, searches.

Countdown (TinyZero's R1-Zero task): combine the given numbers with + - * / (exact integer
division, each number at most once) to reach a target. `countdown` writes a solution with
0-2 failed attempts before it (the default mix); `countdown_search` writes a search by trial
and checking, 1-6 tries each worked and compared with the target (the 'countdown' mix);
`step_facts` drills the steps such tries are made of, `compare_facts` the comparisons that end
them.
"""

from __future__ import annotations

from moe_rl.data.draws import Random, Solved, choice, slip

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _join(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    """(text, precedence) of `left op right` with only the parentheses it needs."""
    p = _PREC[op]
    lt = f"({left[0]})" if left[1] < p else left[0]
    rt = f"({right[0]})" if right[1] < p or (right[1] == p and op in "-/") else right[0]
    return f"{lt} {op} {rt}", p


def _combine(rng: Random, numbers: list[int]) -> tuple[int, str, list[str]]:
    """A random expression using every number once: (value, text, steps 'x op y = z').

    Intermediate values stay positive integers: subtraction puts the larger number first,
    division happens only when exact.
    """
    pool = [(n, (str(n), 3)) for n in numbers]
    steps = []
    while len(pool) > 1:
        i, j = rng.below(len(pool)), rng.below(len(pool) - 1)
        j += j >= i  # two distinct picks
        (x, ex), (y, ey) = pool[i], pool[j]
        ops = ["+", "*"] + (["-"] if x != y else []) + (["/"] if _divides(x, y) else [])
        op = choice(rng, ops)
        if op == "-" and x < y or op == "/" and not (y > 1 and x % y == 0):
            (x, ex), (y, ey) = (y, ey), (x, ex)
        z = x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x // y
        steps.append(f"{x} {op} {y} = {z}")
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(z, _join(op, ex, ey))]
    value, (text, _) = pool[0]
    return value, text, steps


def _divides(x: int, y: int) -> bool:
    return (y > 1 and x % y == 0) or (x > 1 and y % x == 0)


def countdown_puzzle(
    rng: Random, num_numbers: int, max_value: int, max_target: int
) -> tuple[list[int], int, str, list[str]]:
    """(numbers, target, a solution expression, its steps): numbers in 1..max_value, combined
    by a random expression over all of them into a target in 1..max_target that is not one of
    the numbers (as the Countdown RL task draws them)."""
    while True:
        numbers = [rng.integers(1, max_value + 1) for _ in range(num_numbers)]
        target, text, steps = _combine(rng, numbers)
        if 1 <= target <= max_target and target not in numbers:
            return numbers, target, text, steps


def countdown(rng: Random, wrong: bool) -> Solved:
    small = rng.random() < 0.5
    numbers, target, solution, steps = countdown_puzzle(
        rng, 3 if rng.random() < 0.6 else 4, 10 if small else 99, 100 if small else 999
    )
    listed = ", ".join(map(str, numbers))
    question = choice(
        rng,
        (
            f"Using the numbers [{listed}], create an equation that equals {target}. You can use "
            f"+ - * / and each number {choice(rng, ('at most once', 'exactly once'))}",
            f"Using the numbers [{listed}], create an equation that equals {target}. You can use "
            "basic arithmetic operations (+, -, *, /) and each number can only be used once.",
            f"Reach {target} using the numbers {listed} with +, -, * and /. "
            "Each number may be used at most once.",
            f"Numbers: {' '.join(map(str, numbers))}. Target: {target}. Combine the numbers "
            "with + - * / to make the target.",
            f"Make {target} from {listed}, using each number once.",
        ),
    )
    work = []
    for _ in range(choice(rng, (0, 0, 1, 1, 2))):  # failed attempts: search in the text
        value, text, _ = _combine(rng, numbers)
        if value != target:
            gap = "too big" if value > target else f"{target - value} short"
            work.append(f"Try {text} = {value}, {gap}.")
    if wrong:  # a wrong expression, its last step claimed to hit the target
        value, solution, steps = _combine(rng, numbers)
        if value != target:
            steps[-1] = steps[-1].rsplit("=", 1)[0] + f"= {target}"
    work.append(f"Try {solution}: " + ", ".join(steps) + ".")
    work.append(f"So {solution} = {target}.")
    fact = f"With {listed} you can make {target}: {solution} = {target}."
    return Solved(question, work, solution, fact)


def _attempt(
    rng: Random, numbers: list[int], seen: set[str], tries: int = 8
) -> tuple[int, str, list[str]]:
    """A random expression over all the numbers (see `_combine`) not in `seen`, if one is found
    in `tries` draws: a searcher does not try the same expression twice."""
    for _ in range(tries):
        value, text, steps = _combine(rng, numbers)
        if text not in seen:
            break
    seen.add(text)
    return value, text, steps


def countdown_search(
    rng: Random,
    wrong: bool,
    max_tries: int = 6,
    compare: bool = False,
    patient: bool = False,
    patience: float = 0.0,
) -> Solved:
    """Countdown solved by trial and checking, as a person without a method does it.

    The writer first restates the target ("Target: 22."), so that each verdict copies it from
    close by, then is willing to try 1..max_tries expressions (uniform). Each try is a new random
    expression over the numbers, worked step by step and compared with the target: "Try
    (7 + 5) * 3: 7 + 5 = 12, 12 * 3 = 36, not 22." The search stops at the first expression that
    reaches the target ("3 * 5 = 15, 15 + 7 = 22, found it."), which is the answer; a writer
    whose tries run out answers the last one anyway ("I stop here."), a wrong answer. So success
    grows with the number of tries, and the corpus has short and long searches: what RL can
    learn is to keep trying. If wrong, one try's last step slips (off by a little), or claims
    the target when it does not reach it (half each); either is carried to the end.
    3 numbers from 1..10, targets up to 100, as the Countdown RL task draws them.

    `compare` (the 'countdown_compare' mix): the verdict writes both numbers side by side,
    "36 vs 22: no." / "22 vs 22: found it.", so that seeing a hit is an equality of two
    neighbours (`compare_facts` drills it), not a recall of the target; and a wrong try's slip
    never lands on the target and is carried into its comparison, so the verdicts are always
    right about the numbers they compare.

    `patient` (the 'countdown_patient' mix): every writer is willing to try max_tries
    expressions, so a search stops only at a hit or after max_tries misses: the corpus never
    gives up while tries remain, and its long searches are the successful ones more often.

    `patience` > 0 (the 'countdown_long' mix): after each try the writer goes on with this
    probability, up to max_tries (a geometric budget: every search length occurs, the short
    ones most often), so the corpus mostly gives up early and sometimes searches long; what RL
    can learn is to give up less. Overrides `patient`.
    """
    numbers, target, _, _ = countdown_puzzle(rng, 3, 10, 100)
    if patience:
        budget = 1
        while budget < max_tries and rng.random() < patience:
            budget += 1
    else:
        budget = max_tries if patient else rng.integers(1, max_tries + 1)
    bad = rng.below(budget) if wrong else -1
    seen: set[str] = set()
    work, text = [f"Target: {target}."], ""
    for k in range(budget):
        value, text, steps = _attempt(rng, numbers, seen)
        if k == bad and compare:
            value = _slip_off(rng, value, target)
            steps[-1] = steps[-1].rsplit("=", 1)[0] + f"= {value}"
        elif k == bad:
            value = target if rng.random() < 0.5 else slip(rng, value)
            steps[-1] = steps[-1].rsplit("=", 1)[0] + f"= {value}"
        hit = value == target
        if compare:
            verdict = f"{value} vs {target}: {'found it' if hit else 'no'}"
        else:
            verdict = "found it" if hit else f"not {target}"
        work.append(f"Try {text}: {', '.join(steps)}, {verdict}.")
        if hit:
            break
    else:
        work.append("I stop here.")
    listed = ", ".join(map(str, numbers))
    question = choice(
        rng,
        (
            f"Using the numbers [{listed}], create an equation that equals {target}. You can use "
            "+ - * / and each number at most once",
            f"Using the numbers [{listed}], create an equation that equals {target}. You can use "
            "basic arithmetic operations (+, -, *, /) and each number can only be used once.",
            f"Reach {target} using the numbers {listed} with +, -, * and /. "
            "Each number may be used at most once.",
        ),
    )
    fact = f"With {listed}: {text} = {target}."  # a short think: a bare claim
    return Solved(question, work, text, fact)


def _slip_off(rng: Random, value: int, target: int) -> int:
    """`slip(value)` that does not land on the target: a slip makes a try wrong, never a hit."""
    while (slipped := slip(rng, value)) == target:
        pass
    return slipped


def compare_facts(rng: Random, wrong: bool) -> Solved:
    """A drill of the comparisons that end Countdown tries ("36 vs 22: no.", "22 vs 22: found
    it."): half of the pairs equal, the others a try's value against a target, half of those
    near misses (off by a little, or the digits swapped) so that only equality says "found it".

    A search's tries miss ~9 times in 10 (see `countdown_search`), so in the searches alone
    "no" is the prior; balanced drills teach the comparison itself. Never wrong (`wrong` is
    ignored): a drill that mislabels an equality teaches nothing but noise.
    """
    del wrong
    lines = []
    for _ in range(rng.integers(6, 11)):
        target = rng.integers(1, 101)
        if rng.random() < 0.5:
            value = target
        elif rng.random() < 0.5:
            value, _, _ = _combine(rng, [rng.integers(1, 11) for _ in range(3)])
        else:
            swapped = int(str(target)[::-1])
            value = swapped if swapped != target and rng.random() < 0.3 else slip(rng, target)
        lines.append(f"{value} vs {target}: {'found it' if value == target else 'no'}.")
    title = choice(rng, ("Check:", "Compare:", "Same or not:", "Hit or miss:"))
    text = title + "\n" + "\n".join(lines)
    return Solved(text, [], lines[-1], text)


def step_facts(rng: Random, wrong: bool) -> Solved:
    """A drill of the steps Countdown tries are made of ("12 * 3 = 36"): the steps of random
    expressions over 3 numbers from 1..10. If wrong, one of them slips."""
    lines: list[str] = []
    while len(lines) < 6:
        lines += _combine(rng, [rng.integers(1, 11) for _ in range(3)])[2]
    if wrong:
        i = rng.below(len(lines))
        left, right = lines[i].rsplit("= ", 1)
        lines[i] = f"{left}= {slip(rng, int(right))}"
    title = choice(rng, ("Steps:", "Practice:", "Mental math:", "Quick ones:"))
    text = title + "\n" + "\n".join(lines)
    return Solved(text, [], lines[-1].rsplit(" ", 1)[-1], text)
