"""One experiment over several seeds: `python -m moe_rl.main --config=... --seeds=0-4`.

A learning result is a claim over seeds. Each seed runs the experiment's recipe unchanged but
for `config.seed`, in `<workdir>/seed_<n>` (so a killed sweep resumes inside the seed it was
running, and a finished seed is not run again). The recipe's result becomes one row of scalars
(its module's `seed_row(result)`, else the result's top-level numbers); the sweep prints the
rows with their mean, standard deviation (n - 1) and minimum, writes them to
`<workdir>/seeds.md` and `seeds.json`, and overlays the seeds' training curves (the module's
`SEED_CURVES` metric keys, or its own `seed_figure(workdir, seeds)`) in `<workdir>/seeds.png`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import ml_collections
import numpy as np

from moe_rl import plots

RESULT_FILE = "seed_result.json"


def parse_seeds(spec: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,7' -> [0, 2, 7]; '3' -> [3]; ranges and lists mix."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, dash, high = part.partition("-")
        try:
            if dash:
                lo, hi = int(low), int(high)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(
                f"--seeds={spec!r}: expected seeds like '0-4' or '0,2,7' (non-negative integers, "
                "ranges low-high)"
            ) from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds={spec!r}: expected at least one non-negative seed, e.g. '0-4'")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={spec!r} names a seed twice")
    return seeds


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of `config` with config.seed = seed and '{seed}' in any string value replaced by
    the seed (e.g. --config.teacher_workdir=runs/r1_zero/seed_{seed}: each seed's own teacher);
    everything else unchanged."""
    if "seed" not in config:
        raise ValueError(
            f"config.recipe={config.get('recipe')!r} has no top-level config.seed: --seeds "
            "needs one"
        )

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, str):
            return value.replace("{seed}", str(seed))
        return value

    out = ml_collections.ConfigDict(fill(config.to_dict()))
    out.seed = seed
    return out


def scalar_row(result: dict) -> dict[str, float]:
    """The top-level int/float values of a recipe's result (booleans and nested values left out)."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _finished(seed_dir: str, config: ml_collections.ConfigDict) -> dict | None:
    """The stored row of a seed that already finished with this very config, else None."""
    path = os.path.join(seed_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved["row"] if saved.get("config") == json.loads(config.to_json_best_effort()) else None


def summarize(rows: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per column: mean, std (n - 1; 0 for one seed), min and max over the seeds that have it."""
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    out = {}
    for key in columns:
        values = np.asarray([row[key] for row in rows.values() if key in row], dtype=float)
        with np.errstate(invalid="ignore"):  # an inf value (e.g. never reached): std nan
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[key] = {
            "mean": float(values.mean()),
            "std": std,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def seeds_table(rows: dict[int, dict[str, float]], stats: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per seed, then mean, std and min."""
    columns = list(stats)
    lines = ["| seed | " + " | ".join(columns) + " |", "| ---: |" + " ---: |" * len(columns)]
    for seed, row in sorted(rows.items()):
        cells = [_fmt(row[c]) if c in row else "" for c in columns]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    for stat in ("mean", "std", "min"):
        lines.append(f"| **{stat}** | " + " | ".join(_fmt(stats[c][stat]) for c in columns) + " |")
    return "\n".join(lines)


def report(
    name: str, workdir: str, rows: dict[int, dict[str, float]], curves=(), figure=None
) -> dict:
    """Writes seeds.md, seeds.json and seeds.png for the rows so far: `figure(workdir, seeds)`
    draws it where given, else the seeds' `curves` metric keys are overlaid."""
    rows = dict(sorted(rows.items()))
    stats = summarize(rows)
    table = seeds_table(rows, stats)
    header = f"{name}: {len(rows)} seeds ({', '.join(map(str, rows))}), workdir {workdir}"
    with open(os.path.join(workdir, "seeds.md"), "w") as f:
        f.write(f"{header}\n\n{table}\n")
    with open(os.path.join(workdir, "seeds.json"), "w") as f:
        json.dump(
            {"name": name, "rows": {str(s): r for s, r in rows.items()}, "stats": stats},
            f,
            indent=2,
        )
    plot = None
    if figure is not None:
        plot = figure(workdir, list(rows))
    elif curves:
        plot = plots.plot_runs(
            {f"seed {s}": os.path.join(workdir, f"seed_{s}") for s in rows},
            list(curves),
            os.path.join(workdir, "seeds.png"),
            title=f"{name}: {len(rows)} seeds",
        )
    return {"rows": rows, "stats": stats, "table": table, "plot": plot, "header": header}


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    seeds: Sequence[int],
    recipe: ModuleType,
    run_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
) -> dict:
    """Runs `recipe.run` (or `run_fn`) once per seed in <workdir>/seed_<n>, the report files
    rewritten after each seed (a sweep stopped early leaves the seeds it finished); returns
    {'rows': {seed: row}, 'stats': {column: {mean, std, min, max}}, 'table', 'plot'}."""
    run_fn = run_fn or recipe.run
    row_fn = getattr(recipe, "seed_row", scalar_row)
    curves = getattr(recipe, "SEED_CURVES", ())
    name = config.get("name") or config.get("recipe")
    configs = {seed: seed_config(config, seed) for seed in seeds}  # every seed checked first
    os.makedirs(workdir, exist_ok=True)
    rows: dict[int, dict[str, float]] = {}
    for seed, cfg in configs.items():  # in the order given; reported sorted by seed
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        done = _finished(seed_dir, cfg)
        if done is not None:
            print(f"seed {seed}: finished earlier in {seed_dir}, its row is reused")
            rows[seed] = done
            continue
        print(f"seed {seed}: running in {seed_dir}")
        start = time.perf_counter()
        result = run_fn(cfg, seed_dir)
        row = row_fn(result)
        row.setdefault("minutes", (time.perf_counter() - start) / 60)
        rows[seed] = row
        os.makedirs(seed_dir, exist_ok=True)
        with open(os.path.join(seed_dir, RESULT_FILE), "w") as f:
            json.dump({"config": json.loads(cfg.to_json_best_effort()), "row": row}, f, indent=2)
        if len(rows) < len(configs):
            report(name, workdir, rows)  # partial tables; the figure once at the end
    out = report(name, workdir, rows, curves, getattr(recipe, "seed_figure", None))
    print(f"\n{out.pop('header')}\n{out['table']}")
    return out
