"""Orbax checkpoints: the train state pytree plus a small JSON (data-iterator position etc.).

Saves are asynchronous; the newest checkpoint that restores cleanly wins — a corrupt or
partial one is skipped with a warning, never loaded.
"""

from __future__ import annotations

import logging as py_logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class _QuietReadOnly(py_logging.Filter):
    """Drops Orbax's warning that a directory opened read-only is read-only: moe_rl opens
    every checkpoint it only reads that way, on purpose."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return "Given directory is read only" not in record.getMessage()


py_logging.getLogger("absl").addFilter(_QuietReadOnly())


class Checkpointer:
    """Keeps the last `keep` checkpoints of (state, extra) under `<workdir>/checkpoints`."""

    def __init__(
        self, workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False
    ):
        """read_only: only restore (e.g. an init_checkpoint): nothing is created or written, so
        a mistyped path stays absent on disk."""
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=async_save and not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "extra")
        )

    def save(self, step: int, state: Any, extra: dict | None = None, force: bool = False) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})
        )
        self.manager.save(step, args=args, force=force)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """(state, extra, step) of the newest readable checkpoint, or None if there is none."""
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
                    ),
                )
                state = restored["state"]
                jax.block_until_ready(state)
                return state, dict(restored["extra"] or {}), step
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                logging.warning(
                    "Skipping unreadable checkpoint at step %d in %s: %s", step, self.directory, e
                )
                self._set_aside(step)
        return None

    def _set_aside(self, step: int) -> None:
        """Renames an unreadable step to '<step>.unreadable[.n]' (kept, not deleted), so that a
        run resumed from an older step can save this step again (Orbax refuses an existing
        one). Read-only readers leave it where it is."""
        if self.read_only or jax.process_index() != 0:
            return
        path = os.path.join(self.directory, str(step))
        if not os.path.isdir(path):
            return
        target, n = f"{path}.unreadable", 1
        while os.path.exists(target):
            target, n = f"{path}.unreadable.{n}", n + 1
        os.replace(path, target)
        logging.warning("Moved the unreadable checkpoint of step %d to %s", step, target)
        self.manager.reload()

    def restore_latest_model(self, abstract_model: Any) -> tuple[Any, int] | None:
        """The newest readable checkpoint's {'params', 'model_state'} as in `abstract_model`.

        Reads only what a model needs from a saved train state (no optimizer config needed);
        raises ValueError naming the differences if the checkpoint holds another model.
        """
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                model = self._read_model(step, abstract_model)
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                logging.warning(
                    "Skipping unreadable checkpoint at step %d in %s: %s", step, self.directory, e
                )
                continue
            return _conform(model, abstract_model, self.directory), step
        return None

    def restore_model(self, step: int, abstract_model: Any) -> Any:
        """The checkpoint of `step`'s {'params', 'model_state'} as in `abstract_model` (e.g.
        every evaluation's checkpoint of a run); raises if it is unreadable or another model."""
        return _conform(self._read_model(step, abstract_model), abstract_model, self.directory)

    def _read_model(self, step: int, abstract_model: Any) -> dict:
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        saved = self.manager.restore(step, args=args)["state"]
        return {k: saved[k] for k in abstract_model}

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _conform(tree: Any, abstract: Any, where: str) -> Any:
    """`tree` (nested dicts of arrays) as jax arrays in `abstract`'s structure, shapes, dtypes."""
    paths = lambda t: {
        jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(t)
    }
    got, want = paths(tree), paths(abstract)
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [k for k in set(want) & set(got) if tuple(got[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or wrong:
        shapes = [
            f"{k} saved {tuple(got[k].shape)} vs config {tuple(want[k].shape)}"
            for k in sorted(wrong)[:5]
        ]
        raise ValueError(
            f"the checkpoint in {where} holds another model than config.model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {shapes}"
            + _vocab_hint(got, want, where)
        )
    leaves = [jax.numpy.asarray(got[k], want[k].dtype) for k in want]
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def _vocab_hint(got: dict, want: dict, where: str) -> str:
    """If the embeddings differ in their number of rows: the vocab_size and tokenizer to use."""
    for k in want:
        if k in got and "embed" in k and got[k].ndim == 2 and got[k].shape[0] != want[k].shape[0]:
            workdir = os.path.dirname(where)
            folders = [
                os.path.join(workdir, *sub, "tokenizer")
                for sub in ((), ("base",))
                if os.path.exists(os.path.join(workdir, *sub, "tokenizer", "tokenizer.json"))
            ]
            tok = f" and --config.tokenizer={folders[0]}" if folders else ""
            return (
                f". Its vocabulary has {got[k].shape[0]} tokens, config.model.vocab_size="
                f"{want[k].shape[0]}: set --config.model.vocab_size={got[k].shape[0]}{tok}"
            )
    return ""
