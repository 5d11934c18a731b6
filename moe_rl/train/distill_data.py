"""Teacher rejection sampling: keep the verified completions and write them as a JSONL
dataset, with its statistics in a sibling JSON file. Pure Python, no arrays.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence


def _check_flag(x, name, q, g):
    # Rewards are often floats: 1.0 / 0.0 are fine, a partial credit like 0.5 is a bug here.
    if x not in (0, 1):
        raise ValueError(f"{name}[{q}][{g}]={x!r}; allowed: True/False or 1/0")
    return bool(x)


def select_answers(
    questions: Sequence[str],
    completions: Sequence[Sequence[str]],
    correct: Sequence[Sequence[bool]],
    formatted: Sequence[Sequence[bool]],
    shortest_only: bool = False,
    num_tokens: Sequence[Sequence[int]] | None = None,
) -> tuple[list[dict], dict]:
    """The completions that are correct and well formatted, as (rows, stats).

    `completions[q]` are the samples for `questions[q]`, `correct[q][g]` and `formatted[q][g]`
    their verdicts (and `num_tokens[q][g]` their lengths, if known). Exact duplicate texts of
    one question are kept once; with `shortest_only` only the shortest answer of each question
    is kept (by tokens if given, else by characters; ties: the first sampled). Questions are
    taken per position: repeating a question in `questions` repeats its rows.

    Rows: {"question", "completion", "num_chars"[, "num_tokens"]}, in sampling order.
    Stats: questions, sampled, verified (correct and formatted), duplicates (verified but
    dropped as exact repeats), kept, acceptance_rate = verified / sampled (the rejection
    sampler's acceptance, before deduplication), questions_with_answer, shortest_only.
    """
    Q = len(questions)
    lists = {"completions": completions, "correct": correct, "formatted": formatted}
    if num_tokens is not None:
        lists["num_tokens"] = num_tokens
    for name, x in lists.items():
        if len(x) != Q:
            raise ValueError(f"len({name})={len(x)} != len(questions)={Q}")
    for q in range(Q):
        for name, x in lists.items():
            if len(x[q]) != len(completions[q]):
                raise ValueError(
                    f"len({name}[{q}])={len(x[q])} != len(completions[{q}])={len(completions[q])}"
                )

    rows, sampled, verified, duplicates, with_answer = [], 0, 0, 0, 0
    for q, question in enumerate(questions):
        kept_q, seen = [], set()
        for g, text in enumerate(completions[q]):
            sampled += 1
            ok = _check_flag(correct[q][g], "correct", q, g)
            ok &= _check_flag(formatted[q][g], "formatted", q, g)
            if not ok:
                continue
            verified += 1
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            row = {"question": question, "completion": text, "num_chars": len(text)}
            if num_tokens is not None:
                row["num_tokens"] = int(num_tokens[q][g])
            kept_q.append(row)
        if kept_q:
            with_answer += 1
        if shortest_only and kept_q:
            key = "num_tokens" if num_tokens is not None else "num_chars"
            kept_q = [min(kept_q, key=lambda r: r[key])]  # min keeps the first of equals
        rows.extend(kept_q)

    stats = {
        "questions": Q,
        "sampled": sampled,
        "verified": verified,
        "duplicates": duplicates,
        "kept": len(rows),
        "acceptance_rate": verified / sampled if sampled else 0.0,
        "questions_with_answer": with_answer,
        "shortest_only": bool(shortest_only),
    }
    return rows, stats


def stats_path(path: str) -> str:
    """The statistics file next to a dataset: data/train.jsonl -> data/train.stats.json."""
    return os.path.splitext(path)[0] + ".stats.json"


def _atomic_write(path: str, text: str) -> None:
    """Write to a temporary file in the same directory, then os.replace: readers see the old
    file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_jsonl(path: str, rows: Sequence[dict], stats: dict) -> str:
    """Writes `rows` as JSONL to `path` and `stats` to `stats_path(path)`; returns the latter.

    The dataset goes first, so a stats file implies a complete dataset beside it.
    """
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _atomic_write(stats_path(path), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats_path(path)


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
