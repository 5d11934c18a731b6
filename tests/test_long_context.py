"""benchmarks/long_context.py: its crossover rule, and a toy run writing table, JSON and figure."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import long_context  # noqa: E402  (benchmarks/long_context.py)


def _rows(base, other):
    return [
        {"model": m, "context": L, "t": t}
        for m, ts in (("tiny", base), ("tiny_v4", other))
        for L, t in zip((1, 2, 4, 8), ts, strict=True)
    ]


def test_crossover_is_where_it_stays_faster():
    # faster at 1, slower at 2, faster from 4 on: the crossover is 4, not 1
    assert long_context.crossover(_rows([5, 5, 5, 5], [4, 6, 4, 3]), "tiny", "tiny_v4", "t") == 4
    assert long_context.crossover(_rows([1, 2, 3, 4], [2, 3, 4, 5]), "tiny", "tiny_v4", "t") is None
    # the dense one over its memory budget at the longest contexts: the sparse one wins there
    rows = _rows([1, 2, None, None], [2, 1, 3, 4])
    assert long_context.crossover(rows, "tiny", "tiny_v4", "t") == 2
    # contexts where neither was measured do not count
    assert (
        long_context.crossover(_rows([1, 3, 2, None], [2, 1, 1, None]), "tiny", "tiny_v4", "t") == 2
    )


def test_toy_run_writes_table_json_and_figure(tmp_path):
    rows = long_context.main(
        ["--contexts", "64,96", "--repeats", "1", "--budget_gib", "4", "--out", str(tmp_path)]
    )
    assert {(r["model"], r["context"]) for r in rows} == {
        (m, L) for m in ("tiny", "tiny_v32", "tiny_v4") for L in (64, 96)
    }
    for r in rows:
        assert r["prefill_s_per_token"] > 0 and r["decode_s_per_token"] > 0
        assert r["prefill_temp_bytes"] > 0 and r["cache_bytes_per_token"] > 0
    v4 = [r["cache_bytes_per_token"] for r in rows if r["model"] == "tiny_v4"]
    assert v4[1] < v4[0]  # a fixed window plus entries: fewer bytes per token at 96
    text = (tmp_path / "long_context.md").read_text()
    assert text.count("| 64 |") == 3 and "faster than MLA" in text
    assert json.loads((tmp_path / "long_context.json").read_text())["rows"] == rows
    assert (tmp_path / "long_context.png").stat().st_size > 10_000
    again = tmp_path / "again"
    long_context.main(["--from_json", str(tmp_path / "long_context.json"), "--out", str(again)])
    assert (again / "long_context.md").read_text() == text
