"""benchmarks/device_check.sh --quick: exits 0 and prints one table with every row measured or
skipped with a stated reason."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import device_check  # noqa: E402  (benchmarks/device_check.py: its row names)

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?(e[+-]?\d+)?$")


def test_quick_mode_prints_every_row(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    env.pop("OUT", None)  # else the table goes to $OUT/device_check.md
    cmd = ["bash", os.path.join(ROOT, "benchmarks", "device_check.sh"), "--quick"]
    # Called from another directory: the default file is written there.
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_file = tmp_path / "device_check.md"
    text = out_file.read_text()
    assert text in proc.stdout  # the same table printed and written
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| check | shape | value | unit | relative | peak memory |"
    rows = {}
    assert lines[1].startswith("| --- |")
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6, line
        rows[cells[0]] = cells
    assert set(rows) == set(device_check.ROWS), sorted(set(rows) ^ set(device_check.ROWS))
    assert rows["backend"][2] == "cpu"
    assert rows["jax version"][2]
    assert re.match(r"^count \d+$", rows["device"][4]), rows["device"]
    for name in device_check.ROWS[3:]:
        _, _, value, unit, _, memory = rows[name]
        if value.startswith("skipped: "):
            assert len(value) > len("skipped: ") + 3, name  # a reason follows
            continue
        assert NUMBER.match(value), (name, value)
        assert float(value.replace(",", "")) > 0, (name, value)
        assert unit in ("GFLOP/s", "ms", "tokens/s", "s"), (name, unit)
        assert re.match(r"^[\d.]+ GiB \((device peak|process max RSS)\)$", memory), memory
    assert rows["matmul bfloat16"][2].startswith("skipped: CPU")  # bfloat16: accelerators only
    for name in device_check.ROWS[5:9]:  # each implementation against the bound
        assert re.search(r"[\d.]+x", rows[name][4]), rows[name]
    assert re.search(r"MFU [\d.]+%", rows["pretraining step"][4])
