"""Orbax checkpoints: the train state pytree plus a small JSON (data-iterator position etc.).

Saves are asynchronous; the newest checkpoint that restores cleanly wins — a corrupt or
partial one is skipped with a warning, never loaded.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Keeps the last `keep` checkpoints of (state, extra) under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
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
        return None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
