"""What the Countdown reasoning looks like before and after GRPO, from the held-out answers.

    python docs/results/r1_zero_countdown/search_stats.py runs/r1_zero_countdown

Reads <workdir>/seed_<n>/eval_base.jsonl and eval_policy.jsonl (every held-out answer of the two
evaluations that experiments/r1_zero_countdown.py makes) and counts, for the base and the
policy: the tries per response ("Try <expression>: <steps>, ..."), the share of responses with
more than one try, with a bare claim (a think with no try), that give up ("I stop here."), whose
answer is an expression they checked (a try ending "found it"), and how often such a checked
answer is right; a try's arithmetic: the share of its steps "x op y = z" that are right; and its
checking: the share of verdicts naming a target N ("not N" after a miss in pilots 2-3, "36 vs N:
..." in pilot 5; pilot 4's "no" names none) whose N is the question's target (copied right), and
the share of tries whose verdict agrees with their own last step (found it <=> it is the target),
and of the tries whose last step is the target, the share called "found it" (a hit seen), with
the share of the others called "found it" (a false hit).
Writes search.md and search.json beside this file (or into the folder given second), with one
response of each kind quoted.
"""

import json
import os
import re
import sys
from fractions import Fraction

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# A try: its expression, its steps, the side-by-side comparison (pilot 5: "36 vs 22: ") if any,
# and the verdict ("found it", pilot 3's "not 22", pilot 4's and 5's "no").
TRY = re.compile(r"Try ([^:]+): ([^.]*?), (?:-?\d+ vs (-?\d+): )?(found it|no|not -?\d+)\.")
STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (-?\d+)")
TARGET = re.compile(r"(?:equals|Reach|Make|Target:) (\d+)")
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else None,
}


def response_stats(text: str, question: str = "") -> dict:
    think = text.split("</think>", 1)[0]
    target = TARGET.search(question)
    target = int(target.group(1)) if target else None
    tries = TRY.findall(think)
    answer = ANSWER.search(text)
    answer = " ".join(answer.group(1).split()) if answer else None
    checked = [" ".join(expr.split()) for expr, _, _, verdict in tries if verdict == "found it"]
    steps = [s for _, work, _, _ in tries for s in STEP.findall(work)]
    right = [OPS[op](Fraction(x), Fraction(y)) == int(z) for x, op, y, z in steps]
    # The verdicts naming the target: "not 22" (pilots 2-3) or "36 vs 22: ..." (pilot 5).
    verdicts = [int(vs or v.split()[1]) for _, _, vs, v in tries if vs or v.startswith("not ")]
    copied = [named == target for named in verdicts]
    consistent = []  # the verdict agrees with the try's own last step
    hits = hits_called = misses_called = 0  # tries whose last step is the target, and verdicts
    for _, work, _, verdict in tries:
        last = STEP.findall(work)
        if last and target is not None:
            hit = int(last[-1][3]) == target
            consistent.append((verdict == "found it") == hit)
            hits += hit
            hits_called += hit and verdict == "found it"
            misses_called += not hit and verdict == "found it"
    return {
        "tries": len(tries),
        "verdicts": len(verdicts),
        "copied": sum(copied),
        "judged": len(consistent),
        "hits": hits,
        "hits_called": hits_called,
        "misses_called": misses_called,
        "consistent": sum(consistent),
        "bare": not tries and "With " in think,
        "gave_up": "I stop here." in think,
        "checked": answer is not None and answer in checked,
        "steps": len(steps),
        "steps_right": sum(right),
    }


def stats(path: str) -> dict:
    lines = [json.loads(line) for line in open(path)]
    rows = [response_stats(line["response"], line["question"]) for line in lines]
    acc = np.array([line["accuracy"] for line in lines])
    tries = np.array([r["tries"] for r in rows])
    checked = np.array([r["checked"] for r in rows])
    steps = sum(r["steps"] for r in rows)
    return {
        "responses": len(rows),
        "pass@1": float(acc.mean()),
        "tries per response": float(tries.mean()),
        "share > 1 try": float((tries > 1).mean()),
        "share bare claim": float(np.mean([r["bare"] for r in rows])),
        "share gave up": float(np.mean([r["gave_up"] for r in rows])),
        "share answer checked": float(checked.mean()),
        "right when checked": float(acc[checked].mean()) if checked.any() else float("nan"),
        "steps right": sum(r["steps_right"] for r in rows) / steps if steps else float("nan"),
        "target copied in verdicts": ratio(rows, "copied", "verdicts"),
        "verdict agrees with its steps": ratio(rows, "consistent", "judged"),
        "hits called found it": ratio(rows, "hits_called", "hits"),
        "misses called found it": sum(r["misses_called"] for r in rows)
        / max(1, sum(r["judged"] - r["hits"] for r in rows)),
        "tokens": float(np.mean([line["tokens"] for line in lines])),
    }


def ratio(rows: list[dict], part: str, whole: str) -> float:
    n = sum(r[whole] for r in rows)
    return sum(r[part] for r in rows) / n if n else float("nan")


def example(path: str, want) -> str | None:
    for line in open(path):
        line = json.loads(line)
        if want(line, response_stats(line["response"], line["question"])):
            return f"{line['question']}\n-> {line['response']} (accuracy {line['accuracy']:.0f})"
    return None


def main(workdir: str, out_dir: str = HERE) -> dict:
    seeds = sorted(
        int(d.split("_")[1])
        for d in os.listdir(workdir)
        if d.startswith("seed_") and os.path.exists(os.path.join(workdir, d, "eval_policy.jsonl"))
    )
    out, lines = {}, []
    for seed in seeds:
        for which in ("base", "policy"):
            path = os.path.join(workdir, f"seed_{seed}", f"eval_{which}.jsonl")
            out[f"seed {seed} {which}"] = stats(path)
    columns = list(next(iter(out.values())))
    lines.append("| run | " + " | ".join(columns) + " |")
    lines.append("| --- |" + " ---: |" * len(columns))
    for name, row in out.items():
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    quotes = []
    for seed in seeds[:1]:
        for which in ("base", "policy"):
            path = os.path.join(workdir, f"seed_{seed}", f"eval_{which}.jsonl")
            for label, want in (
                ("right after several tries", lambda l, s: l["accuracy"] == 1 and s["tries"] > 1),
                ("wrong", lambda l, s: l["accuracy"] == 0),
            ):
                quote = example(path, want)
                if quote:
                    quotes.append(f"**seed {seed} {which}, {label}:**\n\n```\n{quote}\n```")
    text = (
        f"Countdown search statistics of the held-out answers ({workdir}, "
        "docs/results/r1_zero_countdown/search_stats.py)\n\n" + "\n".join(lines) + "\n\n"
        + "\n\n".join(quotes) + "\n"
    )  # fmt: skip
    with open(os.path.join(out_dir, "search.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "search.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(text)
    return out


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["runs/r1_zero_countdown"]))
