"""The Colab notebooks: saved without outputs, with a badge, an install cell, a device check and
a `parameters` cell; and each executed top to bottom on the CPU with the smoke settings."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUG = "moe-rl/moe_rl"
# notebook -> figures its smoke run must leave in the working directory
NOTEBOOKS = {
    "01_moe_pretraining.ipynb": [
        "runs/moe_vs_dense/comparison.png",
        "runs/moe_vs_dense/moe/expert_load.png",
        "runs/balance.png",
    ],
    "02_r1_zero.ipynb": ["runs/r1_zero/r1_zero.png", "runs/r1_zero_live.png"],
    "03_distillation.ipynb": ["runs/distill/distill.png"],
}


def test_the_colab_folder_holds_exactly_these_notebooks():
    assert sorted(f for f in os.listdir(os.path.join(ROOT, "colab")) if f.endswith(".ipynb")) == (
        sorted(NOTEBOOKS)
    )


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stripped_and_laid_out(name):
    nb = nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "outputs not stripped"
    title, install, device, params = nb.cells[:4]
    badge = f"https://colab.research.google.com/github/{SLUG}/blob/main/colab/{name}"
    assert title.cell_type == "markdown" and badge in title.source
    assert "colab-badge.svg" in title.source
    assert '"google.colab" not in sys.modules' in install.source
    assert f"https://github.com/{SLUG}" in install.source
    assert "jax.default_backend()" in device.source
    assert params.metadata.get("tags") == ["parameters"] and "SMOKE = False" in params.source
    assert 'os.environ.get("MOE_RL_SMOKE") == "1"' in params.source


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_with_smoke_settings(name, tmp_path, monkeypatch):
    """Top to bottom in a fresh python3 kernel, in tmp_path (its runs/ go there); any cell
    error fails the test (nbclient raises CellExecutionError)."""
    monkeypatch.setenv("MOE_RL_SMOKE", "1")
    nb = nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "SMOKE" in text and "No TPU or GPU: running on the CPU" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure shown"
    for figure in NOTEBOOKS[name]:
        assert (tmp_path / figure).exists(), figure
    assert not os.path.exists(os.path.join(ROOT, "colab", "runs"))
