"""`tfds:math_dataset/<module>`: DeepMind's Mathematics dataset (Saxton et al. 2019) from TFDS.

Loaded with `tfds.data_source(..., download=False)` (random access, no TensorFlow needed). This
environment cannot download it, so an unprepared dataset is a clear error saying how to prepare
it elsewhere. The dataset's own train/test splits are used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from moe_rl.data.tasks.base import SPLITS, Example, Task, check_split
from moe_rl.verify import parse_number


def _text(value) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.strip()


def _load(name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises assorted types for "not there" / "wrong file format"
        where = data_dir or "the default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
        raise FileNotFoundError(
            f"tfds dataset {name!r} (split {split!r}) is not prepared as array_record in {where}, "
            "and it cannot be downloaded here. Prepare it on a machine with network access:\n"
            f"  tfds build {name} --data_dir=DIR --file_format=array_record\n"
            "then copy DIR to this machine and pass data_dir=DIR (or set TFDS_DATA_DIR)."
        ) from e
    if len(source) == 0:
        raise ValueError(f"tfds dataset {name!r} split {split!r} is empty")
    return source


class TfdsMathTask(Task):
    """A module of the Mathematics dataset; answers are numbers, expressions or words.

    Verifier: equal up to whitespace, or equal as exact numbers (`0.75` vs `3/4`); with the
    reward's math-verify option, symbolic equality too.
    """

    math_answer = True

    def __init__(self, dataset: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds

        configs = [c.name for c in tfds.builder_cls("math_dataset").BUILDER_CONFIGS]
        base, _, config = dataset.partition("/")
        if base != "math_dataset" or config not in configs:
            raise ValueError(
                f"unsupported tfds task {dataset!r}: only math_dataset/<module> has a verifier "
                f"here; modules: {', '.join(configs)}"
            )
        self.name = f"tfds:{dataset}"
        self._sources = {split: _load(dataset, split, data_dir) for split in SPLITS}

    def stream(self, split: str, seed: int = 0) -> Iterator[Example]:
        check_split(split)
        source = self._sources[split]
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(len(source)):
                record = source[int(i)]
                yield Example(_text(record["question"]), _text(record["answer"]))

    def verify(self, answer: str, example: Example) -> float:
        if "".join(answer.split()) == "".join(example.answer.split()):
            return 1.0
        value = parse_number(answer)
        return float(value is not None and value == parse_number(example.answer))
