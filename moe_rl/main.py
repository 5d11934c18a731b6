"""Command line entry point: `python -m moe_rl.main --config=experiments/<name>.py`.

Any config field can be overridden: `--config.model.num_hidden_layers=4`. The recipe named
by `config.recipe` (moe_rl/recipes/) is imported and its `run(config, workdir)` called, the
same function the Colab notebooks call.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from moe_rl import sweep
from moe_rl.recipes import RECIPES, get_recipe_module


def _listing() -> str:
    """What --help shows after the docstring: the recipes and the experiment files."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, "experiments")
    files = (
        sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
    )
    lines = ["", "Recipes (config.recipe): " + ", ".join(RECIPES)]
    if files:
        lines.append("Experiments: " + ", ".join(f"experiments/{f}" for f in files))
    return "\n".join(lines) + "\n"


__doc__ = (__doc__ or "") + _listing()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<experiment name>).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host: call jax.distributed.initialize() first; on TPU pods and SLURM/Kubernetes GPU "
    "clusters it finds the coordinator and the peers from the environment.",
)
_TRACEBACK = flags.DEFINE_bool(
    "traceback",
    False,
    "Show the Python traceback of a config or input error (by default its message alone).",
)
_SEEDS = flags.DEFINE_string(
    "seeds",
    None,
    "Run the experiment once per seed ('0-4', '0,2,7') in <workdir>/seed_<n>, resuming finished "
    "seeds, and print per-seed rows with mean, std and min (<workdir>/seeds.md, seeds.json).",
)


def get_recipe(name: str):
    """The `run(config, workdir)` function of a recipe."""
    return get_recipe_module(name).run


def default_workdir(config, config_path: str | None) -> str:
    name = config.get("name") or os.path.splitext(os.path.basename(config_path or "run"))[0]
    return os.path.join("runs", name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=experiments/<name>.py is required")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep the progress bar readable (Orbax is chatty)
    if _DISTRIBUTED.value:
        import jax

        jax.distributed.initialize()
    seeds = None if _SEEDS.value is None else sweep.parse_seeds(_SEEDS.value)
    if seeds is None and "seed" in config:  # '{seed}' in a path means this run's seed too
        config = sweep.seed_config(config, config.seed)
    module = get_recipe_module(config.recipe)
    from moe_rl.data import corpus  # loaded by every recipe; not at import, to keep --help fast

    workdir = _WORKDIR.value or default_workdir(
        config, config_flags.get_config_filename(flags.FLAGS["config"])
    )
    print(banner(config, config_flags.get_config_filename(flags.FLAGS["config"]), workdir, seeds))
    try:
        if seeds is None:
            module.run(config, workdir)
        else:
            sweep.run(config, workdir, seeds, module)
    except KeyboardInterrupt:
        sys.exit(f"moe_rl: interrupted; rerun the same command to resume in {workdir}")
    except (corpus.DatasetNotPreparedError, corpus.CorruptDatasetError) as e:
        sys.exit(f"moe_rl: {e}")  # what to do is in the message: no traceback
    except (ValueError, FloatingPointError) as e:
        # A bad config value or input (the message names the key), or a non-finite loss (the
        # step and metric): the message is what to act on; --traceback shows where it came from.
        if _TRACEBACK.value:
            raise
        sys.exit(f"moe_rl: {' '.join(str(e).split())}\nmoe_rl: (--traceback shows where)")
    print(f"\nDone. Files in {os.path.abspath(workdir)}: {', '.join(written(workdir))}")


def banner(config, config_path: str | None, workdir: str, seeds=None) -> str:
    """What is about to run, in a few lines: recipe, config file and overrides, workdir, devices."""
    import jax

    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    devices = jax.devices()
    lines = [
        f"moe_rl: recipe {config.recipe} from {config_path}"
        + (f" with {' '.join(overrides)}" if overrides else ""),
        f"workdir: {os.path.abspath(workdir)}"
        + (f" (seeds {', '.join(map(str, seeds))}: seed_<n>/ each)" if seeds else ""),
        f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
        *model_lines(config),
    ]
    return "\n".join(lines)


def model_lines(config) -> list[str]:
    """Each model block's run-time choices ('auto' resolved for this backend and config.mesh,
    as the recipe resolves them; models/backend.py); a block that does not validate is left to
    the recipe to report."""
    import jax
    import ml_collections

    from moe_rl import hf, mesh
    from moe_rl.models import backend
    from moe_rl.models.config import ModelConfig

    def blocks(node, path):
        for key, value in node.items():
            if not isinstance(value, ml_collections.ConfigDict):
                continue
            name = f"{path}{key}"
            if "moe_impl" in value and "vocab_size" in value:
                yield name, value
            elif not path:  # one level down: teacher.model, student.model
                yield from blocks(value, f"{name}.")

    lines = []
    try:
        ep = mesh.mesh_shape(config.get("mesh") or {}, jax.device_count())["expert"]
        config = hf.with_hf_model(config)  # a Hugging Face init_checkpoint's architecture
        for name, block in blocks(config, ""):
            m = ModelConfig.from_config(block, expert_parallel=ep)
            lines.append(f"{name}: {backend.describe(m)} (resolved for {jax.default_backend()})")
    except ValueError:
        pass
    return lines


def written(workdir: str) -> list[str]:
    """The top-level files and folders of a workdir (folders with a trailing /)."""
    if not os.path.isdir(workdir):
        return []
    names = sorted(os.listdir(workdir))
    return [n + "/" if os.path.isdir(os.path.join(workdir, n)) else n for n in names]


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _override_error(path: str, argv: list[str]) -> str | None:
    """The first --config.<key>=... naming no field of the config, with the fields there."""
    import difflib
    import runpy

    file, _, arg = path.partition(":")
    get_config = runpy.run_path(file)["get_config"]
    node = get_config(arg) if arg else get_config()
    for a in argv:
        if not a.startswith("--config."):
            continue
        key = a[len("--config.") :].split("=", 1)[0]
        value = node
        for i, part in enumerate(key.split(".")):
            fields = list(value.keys()) if hasattr(value, "keys") else []
            if part not in fields:
                where = ".".join(key.split(".")[:i]) or "config"
                close = difflib.get_close_matches(part, fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "."
                listed = ", ".join(sorted(fields)) if fields else "none (it is a value)"
                return f"--config.{key}: {where} has no field {part!r}{hint} Its fields: {listed}"
            value = value[part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors for the usual mistakes (a missing config file, a
    misspelt key, a bad value) instead of a 30-50 line traceback."""
    path = _config_path(argv)
    if path is not None and not os.path.exists(path.partition(":")[0]):
        known = (
            sorted(f for f in os.listdir("experiments") if f.endswith(".py"))
            if os.path.isdir("experiments")
            else []
        )
        listing = f" (experiments/ holds {', '.join(known)})" if known else ""
        sys.exit(f"moe_rl: --config={path}: no such file{listing}")
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError, flags.Error, ValueError, TypeError) as e:
        message = _override_error(path, argv) if path else None
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.exit(f"moe_rl: {message or ' '.join(str(text).split())}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
