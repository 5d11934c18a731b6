"""The safetensors files of a Hugging Face folder: which tensors they store, and reading one."""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
from safetensors import safe_open

# ----------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Lazy access to the tensors of every safetensors file in a folder."""

    def __init__(self, folder: str):
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not files:
            raise ValueError(f"{folder}: no *.safetensors files")
        self.folder = folder
        self.where: dict[str, str] = {}
        self._open: dict[str, Any] = {}
        for file in files:
            with safe_open(file, "np") as f:
                for key in f.keys():
                    self.where[key] = file
        self.keys = set(self.where)

    def _file(self, key: str):
        file = self.where[key]
        if file not in self._open:
            self._open[file] = safe_open(file, "np")
        return self._open[file]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file(key).get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._file(key).get_tensor(key)
