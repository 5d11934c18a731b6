"""The Colab notebooks stay in step with the code: cells parse, and what they use exists."""

import ast
import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


def code_cells(path):
    cells = json.load(open(path))["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            lines = [line for line in cell["source"] if not line.lstrip().startswith(("!", "%"))]
            yield "".join(lines)


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_cells_parse_and_reference_existing_things(path):
    import importlib

    source = "\n".join(code_cells(path))
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moe_rl"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{path}: from {node.module} import {alias.name}"
    for experiment in re.findall(r"experiments/\w+\.py", source):
        assert os.path.exists(os.path.join(ROOT, experiment)), f"{path}: {experiment}"
    for module, fn in re.findall(r"\b(lm|evaluate)\.(\w+)\(", source):
        mod = importlib.import_module(
            {"lm": "moe_rl.train.lm", "evaluate": "moe_rl.evaluate"}[module]
        )
        assert hasattr(mod, fn), f"{path}: {module}.{fn}"
