"""`jsonl:<path>` and `parquet:<path>`: question files that users bring (GSM8K, MATH, their own).

Each record gives a question and a reference answer, under keys set by the task's options
(`question_key`, `answer_key`; GSM8K's and MATH's are the defaults 'question'/'problem' and
'answer'/'solution'). The reference is read by `answer_format`:

    gsm8k   the text after the last '#### ' (GSM8K: "... #### 1,234" -> "1234", commas dropped)
    boxed   the last \\boxed{...} (MATH's solutions)
    plain   the whole field
    auto    gsm8k if the field has '#### ', else boxed if it has \\boxed{, else plain

A path may hold one file or a folder of them; `test_path` gives a separate test file, else the
records are split by a hash of the question (`test_fraction`), as the generated tasks are, so
the splits are disjoint and fixed. Verification: equal up to spaces, or equal as exact numbers
("0.75" and "3/4"); with the reward's `use_math_verify`, symbolic equality too (math-verify),
only for answers written as numbers when every reference is a number (GSM8K).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import numpy as np

from moe_rl.data.tasks.base import Example, Task, check_split, split_of
from moe_rl.verify import extract_boxed, is_number, parse_number

FORMATS = ("auto", "gsm8k", "boxed", "plain")
QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "solution")


def reference_answer(text: str, answer_format: str = "auto") -> str | None:
    """The reference answer in a dataset's answer field, or None if the format finds none."""
    text = str(text).strip()
    if answer_format == "auto":
        answer_format = "gsm8k" if "#### " in text else "boxed" if "\\boxed{" in text else "plain"
    if answer_format == "gsm8k":
        if "#### " not in text:
            return None
        return text.rsplit("#### ", 1)[1].strip().replace(",", "") or None
    if answer_format == "boxed":
        return extract_boxed(text) or None
    return text or None


def _read_records(path: str, kind: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(path, f"*.{kind}"))) if os.path.isdir(path) else [path]
    if not files or not all(os.path.isfile(f) for f in files):
        raise FileNotFoundError(f"task {kind}:{path}: no such file (or no *.{kind} in the folder)")
    records: list[dict] = []
    for file in files:
        if kind == "jsonl":
            with open(file) as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{file} line {n} is not JSON: {e}") from None
        else:
            import pyarrow.parquet as pq

            records.extend(pq.read_table(file).to_pylist())
    if not records:
        raise ValueError(f"task {kind}:{path}: the file holds no records")
    return records


def _key(records: list[dict], given: str, candidates: tuple[str, ...], what: str, where: str):
    keys = list(records[0])
    if given:
        if given not in keys:
            raise ValueError(f"{where}: {what}_key={given!r} is not a field; fields: {keys}")
        return given
    for k in candidates:
        if k in keys:
            return k
    raise ValueError(
        f'{where}: no {what} field among {keys}; pass --config.task.options="{what}_key=<field>"'
    )


class FileTask(Task):
    """Questions and reference answers from a JSONL or Parquet file (see the module docstring)."""

    math_answer = True

    def __init__(
        self,
        kind: str,
        path: str,
        question_key: str = "",
        answer_key: str = "",
        answer_format: str = "auto",
        test_path: str = "",
        test_fraction: float = 0.1,
    ):
        where = f"task {kind}:{path}"
        if answer_format not in FORMATS:
            raise ValueError(f"{where}: answer_format={answer_format!r}; allowed: {FORMATS}")
        if not test_path and not 0.0 < test_fraction < 1.0:
            raise ValueError(f"{where}: test_fraction={test_fraction} must be in (0, 1)")
        self.name = f"{kind}:{path}"
        records = _read_records(path, kind)
        q = _key(records, question_key, QUESTION_KEYS, "question", where)
        a = _key(records, answer_key, ANSWER_KEYS, "answer", where)

        def examples(rows: list[dict]) -> list[Example]:
            out = []
            for row in rows:
                ref = reference_answer(row.get(a, ""), answer_format)
                if ref is not None and str(row.get(q, "")).strip():
                    out.append(Example(str(row[q]).strip(), ref, {"field": str(row[a])}))
            return out

        if test_path:
            test = examples(_read_records(test_path, kind))
            self._examples = {"train": examples(records), "test": test}
        else:
            every = examples(records)
            self._examples = {
                split: [e for e in every if split_of(e.question, test_fraction) == split]
                for split in ("train", "test")
            }
        for split, rows in self._examples.items():
            if not rows:
                raise ValueError(
                    f"{where}: no {split} example with a {answer_format} answer in field {a!r}"
                )
        every = self._examples["train"] + self._examples["test"]
        self.numeric_answer = all(is_number(e.answer) for e in every)

    def stream(self, split: str, seed: int = 0) -> Iterator[Example]:
        """The split's records in a random order per pass (seeded), endlessly."""
        check_split(split)
        rows = self._examples[split]
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(len(rows)):
                yield rows[int(i)]

    def verify(self, answer: str, example: Example) -> float:
        if "".join(answer.split()) == "".join(example.answer.split()):
            return 1.0
        value = parse_number(answer.replace(",", ""))
        return float(value is not None and value == parse_number(example.answer))
