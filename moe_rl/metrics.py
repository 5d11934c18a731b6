"""metrics.jsonl and TensorBoard: how every recipe writes its metrics and how they are read
back (plots, comparisons, tests). Below `train/` and `plots`, so both can import it."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


class MetricWriter:
    """Appends {'step': s, **metrics} lines to metrics.jsonl and scalars to TensorBoard.

    Multi-process (jax.distributed): only process 0 writes; the others' writes are no-ops, so
    a shared workdir gets each line once."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = self._tb = None
        if jax.process_index() != 0:
            return
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if self._file is None:  # not process 0
            return
        scalars = {k: _to_python(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        """A text panel in TensorBoard (e.g. a before/after table); not in metrics.jsonl."""
        if self._tb is not None:
            self._tb.add_text(tag, markdown, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _to_python(v):
    v = np.asarray(v)
    if v.ndim == 0:
        return v.item()
    return v.tolist()


def read_metrics(workdir: str) -> list[dict]:
    """All lines of metrics.jsonl; a resumed run may repeat steps, the last write wins."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_key: dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                by_key[(row["step"], tuple(sorted(row)))] = row
    return sorted(by_key.values(), key=lambda r: r["step"])
