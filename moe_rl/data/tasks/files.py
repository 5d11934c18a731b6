"""`jsonl:<path>`, `parquet:<path>` and `hf:<dataset>[:<config>]`: the question sets users bring
(GSM8K, MATH, DAPO-Math, their own), from files or through Hugging Face `datasets`.

Each record gives a question and a reference answer, under keys set by the task's options
(`question_key`, `answer_key`; GSM8K's and MATH's are the defaults 'question'/'problem' and
'answer'/'solution'). The reference is read by `answer_format`:

    gsm8k   the text after the last '#### ' (GSM8K: "... #### 1,234" -> "1234", commas dropped)
    boxed   the last \\boxed{...} (MATH's solutions)
    plain   the whole field
    auto    gsm8k if the field has '#### ', else boxed if it has \\boxed{, else plain

A path may hold one file or a folder of them; `test_path` gives a separate test file, else the
records are split by a hash of the question (`test_fraction`), as the generated tasks are, so
the splits are disjoint and fixed. `hf:<dataset>[:<config>]` reads the dataset's `train_split`
and `test_split` (default 'train' and 'test'; `test_split=''` splits train by the hash) with
`datasets.load_dataset`: a Hub name from the local cache (`HF_DATASETS_OFFLINE=1` keeps it
there) or a local folder of data files, e.g. hf:openai/gsm8k:main.

Verification: equal up to spaces, or equal as exact numbers ("0.75" and "3/4"); with the
reward's `use_math_verify`, symbolic equality too (math-verify), only for answers written as
numbers when every reference is a number (GSM8K).
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


def _read_hf(name: str, split: str, where: str) -> list[dict]:
    """One split of a Hugging Face dataset ('<dataset>' or '<dataset>:<config>', a Hub name or a
    local folder) as records, read with `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{where} needs the Hugging Face datasets library: pip install -e '.[hf]'"
        ) from None
    path, _, config = name.partition(":")
    if os.path.isdir(name):  # a local folder whose name holds ':' is not split
        path, config = name, ""
    try:
        data = datasets.load_dataset(path, config or None, split=split)
    except ValueError as e:  # e.g. an unknown split: say which ones there are
        raise ValueError(f"{where}: split {split!r}: {e}") from None
    records = data.to_list()
    if not records:
        raise ValueError(f"{where}: split {split!r} holds no records")
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
    """Questions and reference answers from records (see the module docstring): a JSONL or
    Parquet file (`kind` 'jsonl' / 'parquet'), or a Hugging Face dataset (`kind` 'hf')."""

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
        train_split: str = "train",
        test_split: str = "test",
    ):
        where = f"task {kind}:{path}"
        if answer_format not in FORMATS:
            raise ValueError(f"{where}: answer_format={answer_format!r}; allowed: {FORMATS}")
        # Where the train and test records come from: two splits of a dataset, or two files.
        if kind == "hf":
            load = lambda split: _read_hf(path, split, where)
            train_from, test_from = train_split, test_split
        else:
            load = lambda file: _read_records(file, kind)
            train_from, test_from = path, test_path
        if not test_from and not 0.0 < test_fraction < 1.0:
            raise ValueError(f"{where}: test_fraction={test_fraction} must be in (0, 1)")
        self.name = f"{kind}:{path}"
        records = load(train_from)
        q = _key(records, question_key, QUESTION_KEYS, "question", where)
        a = _key(records, answer_key, ANSWER_KEYS, "answer", where)

        def examples(rows: list[dict]) -> list[Example]:
            out = []
            for row in rows:
                ref = reference_answer(row.get(a, ""), answer_format)
                if ref is not None and str(row.get(q, "")).strip():
                    out.append(Example(str(row[q]).strip(), ref, {"field": str(row[a])}))
            return out

        if test_from:
            test = examples(load(test_from))
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
