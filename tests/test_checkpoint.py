"""Orbax checkpoints: the newest readable one wins; corrupt or partial ones are skipped."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.checkpoint import Checkpointer


def state(step: int):
    key = jax.random.key(step)
    return {"w": jax.random.normal(key, (4, 3)), "b": jnp.full((3,), float(step))}


def save_steps(workdir, steps):
    ckpt = Checkpointer(workdir, keep=5, async_save=False)
    for step in steps:
        ckpt.save(step, state(step), {"data": {"position": step}})
    ckpt.close()


def abstract():
    return jax.eval_shape(lambda: state(0))


def files_under(path):
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def test_round_trip_with_extra(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2])
    got, extra, step = Checkpointer(workdir).restore_latest(abstract())
    assert step == 2
    assert extra == {"data": {"position": 2}}
    jax.tree.map(np.testing.assert_array_equal, got, state(2))


def test_corrupt_latest_is_skipped_with_a_warning(tmp_path, caplog):
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2])
    latest = os.path.join(workdir, "checkpoints", "2", "state")
    for path in files_under(latest):  # garble every file of the newest state
        with open(path, "wb") as f:
            f.write(b"\x00garbage")
    with caplog.at_level("WARNING"):
        got, extra, step = Checkpointer(workdir).restore_latest(abstract())
    assert step == 1 and extra["data"]["position"] == 1
    jax.tree.map(np.testing.assert_array_equal, got, state(1))
    assert "Skipping unreadable checkpoint at step 2" in caplog.text
    # Set aside, not deleted: the resumed run can save step 2 again.
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2.unreadable"))
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(2, state(2))
    ckpt.close()
    got, _, step = Checkpointer(workdir).restore_latest(abstract())
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, got, state(2))


def test_read_only_reader_leaves_an_unreadable_checkpoint_in_place(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2])
    for path in files_under(os.path.join(workdir, "checkpoints", "2", "state")):
        with open(path, "wb") as f:
            f.write(b"\x00garbage")
    _, _, step = Checkpointer(workdir, read_only=True).restore_latest(abstract())
    assert step == 1 and os.path.isdir(os.path.join(workdir, "checkpoints", "2"))


def test_partial_save_is_never_loaded(tmp_path):
    """A save killed before it finished leaves files but no finished step directory."""
    workdir = str(tmp_path)
    save_steps(workdir, [1])
    partial = os.path.join(workdir, "checkpoints", "3.orbax-checkpoint-tmp-123")
    os.makedirs(os.path.join(partial, "state"))
    with open(os.path.join(partial, "state", "bytes"), "wb") as f:
        f.write(b"half")
    got, _, step = Checkpointer(workdir).restore_latest(abstract())
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, got, state(1))


def test_no_checkpoint_gives_none(tmp_path):
    assert Checkpointer(str(tmp_path)).restore_latest(abstract()) is None


def test_read_only_never_writes(tmp_path):
    """Reading a mistyped init_checkpoint must leave nothing on disk (it used to create
    <path>/checkpoints while raising)."""
    missing = tmp_path / "no_such_run"
    reader = Checkpointer(str(missing), read_only=True)
    assert reader.restore_latest(abstract()) is None and reader.latest_step() is None
    assert not missing.exists()
    writer = Checkpointer(str(tmp_path / "run"), async_save=False)
    writer.save(3, state(3))
    writer.close()
    got, _, step = Checkpointer(str(tmp_path / "run"), read_only=True).restore_latest(abstract())
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, got, state(3))


def test_another_vocabulary_says_which_vocab_size_and_tokenizer_to_use(tmp_path):
    """E.g. experiments/eval.py (vocab 264) on an R1-Zero run (its BPE has 384 tokens)."""

    def model(vocab):
        return {
            "params": {"embed": {"embedding": jnp.ones((vocab, 8))}, "w": jnp.ones((8, 8))},
            "model_state": {},
        }

    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(3, {"step": np.int32(3), **model(384)})
    ckpt.close()
    os.makedirs(tmp_path / "base" / "tokenizer")
    (tmp_path / "base" / "tokenizer" / "tokenizer.json").write_text("{}")
    reader = Checkpointer(str(tmp_path), read_only=True)
    with pytest.raises(ValueError) as error:
        reader.restore_latest_model(jax.eval_shape(lambda: model(264)))
    message = str(error.value)
    assert "['params']['embed']['embedding'] saved (384, 8) vs config (264, 8)" in message
    assert f"--config.model.vocab_size=384 and --config.tokenizer={tmp_path}/base/tokenizer" in (
        message
    )
