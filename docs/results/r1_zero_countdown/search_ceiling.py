"""How far random search reaches on the RL task's puzzles: writes search_ceiling.json/.md.

    python docs/results/r1_zero_countdown/search_ceiling.py

The corpus's writers try random expressions over all three numbers, never the same text twice
(`countdown_docs._attempt`). For 3,000 puzzles drawn as the RL task draws them (3 numbers in
1..10, target <= 100), the share a writer solves within B tries, and the pass@1 of the corpus's
budgets if every try were worked and checked right: 'patient' (6 tries, pilots 7-17), and
'countdown_long's geometric budget (after each miss go on with probability 0.8, up to 12).
What a base and a policy reach is below these: they repeat tries and slip. Also the searches of
the 'countdown_long' corpus itself (its first 5,000 documents of seed 0): tries per search and
the share that give up.
"""

import json
import os

from moe_rl.data.arithmetic import documents
from moe_rl.data.countdown_docs import _attempt, countdown_puzzle
from moe_rl.data.draws import Random

HERE = os.path.dirname(os.path.abspath(__file__))
PUZZLES, MAX = 3000, 30


def first_hits(seed: int = 5) -> list[int]:
    """For each puzzle, the try on which a writer first hits (MAX + 1: not within MAX)."""
    rng, out = Random(seed), []
    for _ in range(PUZZLES):
        numbers, target, _, _ = countdown_puzzle(rng, 3, 10, 100)
        seen, first = set(), MAX + 1
        for k in range(1, MAX + 1):
            if _attempt(rng, numbers, seen)[0] == target:
                first = k
                break
        out.append(first)
    return out


def main() -> dict:
    firsts = first_hits()
    within = {b: sum(f <= b for f in firsts) / PUZZLES for b in range(1, MAX + 1)}
    q, cap = 0.8, 12
    geometric = {
        b: q ** (b - 1) * (1 - q) if b < cap else q ** (cap - 1) for b in range(1, cap + 1)
    }
    budgets = {
        "patient (6 tries)": {6: 1.0},
        "countdown_long (p 0.8, up to 12)": geometric,
    }
    result = {
        "puzzles": PUZZLES,
        "solved within B tries": {str(b): round(v, 4) for b, v in within.items()},
        "pass@1 of the corpus's budgets": {
            name: round(sum(p * within[b] for b, p in dist.items()), 4)
            for name, dist in budgets.items()
        },
    }
    searches = [d for d in documents(5000, 0, "countdown_long") if "Target:" in d]
    result["countdown_long corpus"] = {
        "searches in 5,000 documents": len(searches),
        "tries per search": round(sum(d.count(" Try ") for d in searches) / len(searches), 3),
        "share giving up": round(sum("I stop here." in d for d in searches) / len(searches), 3),
    }
    with open(os.path.join(HERE, "search_ceiling.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| tries B | 1 | 3 | 6 | 9 | 12 | 16 | 20 | 30 |", "|" + " ---: |" * 9]
    lines.append(
        "| solved within B | "
        + " | ".join(f"{within[b]:.3f}" for b in (1, 3, 6, 9, 12, 16, 20, 30))
        + " |"
    )
    lines += ["", "| budget | pass@1 if every try were right |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["pass@1 of the corpus's budgets"].items()]
    lines += ["", "| countdown_long corpus | |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in result["countdown_long corpus"].items()]
    with open(os.path.join(HERE, "search_ceiling.md"), "w") as f:
        f.write(f"Random search on {PUZZLES:,} Countdown puzzles (search_ceiling.py)\n\n")
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
