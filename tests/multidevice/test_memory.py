"""The memory planner's per-device bytes equal what one device holds once the sharded train
state and KV cache are really created, on 8 fake CPU devices."""

import os
import runpy

import jax
import pytest

from moe_rl import memory, sharding
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.train import train_state

MESHES = {
    "data8": dict(data=8),
    "data2_expert4": dict(data=2, expert=4),
    "fsdp2_expert2_tensor2": dict(fsdp=2, expert=2, tensor=2),
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_for(**mesh):
    """experiments/pretrain_moe.py (the tiny MoE) with a small batch on `mesh`."""
    config = runpy.run_path(os.path.join(ROOT, "experiments/pretrain_moe.py"))["get_config"]()
    config.train.batch_size, config.train.seq_len = 8, 32
    config.mesh.update({"data": 1, **mesh})
    return config


def created_bytes(config):
    """Bytes device 0 holds of each part of the train state and of the KV cache, created
    directly in their shardings (as lm.restore_or_init and the sampler do)."""
    cfg = ModelConfig.from_config(config.model)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    tx = train_state.make_optimizer(config.optim, config.train.num_steps)
    make = lambda: train_state.init(cfg, tx, 0)
    shardings = sharding.state_shardings(jax.eval_shape(make), cfg, mesh)
    state = jax.jit(make, out_shardings=shardings)()
    rows, slots = config.train.batch_size, config.train.seq_len
    make_cache = lambda: transformer.init_cache(cfg, rows, slots)
    cache_sh = memory.cache_shardings(cfg, jax.eval_shape(make_cache), mesh)
    cache = jax.jit(make_cache, out_shardings=cache_sh)()
    return {
        "params": sharding.addressable_bytes(state.params),
        "optimizer state": sharding.addressable_bytes(state.opt_state),
        "model state": sharding.addressable_bytes(state.model_state),
        "train state": sharding.addressable_bytes(state),
        "kv cache": sharding.addressable_bytes(cache),
    }


@pytest.mark.parametrize("name", list(MESHES))
def test_planned_bytes_equal_the_created_state_and_cache(name):
    config = config_for(**MESHES[name])
    result = memory.plan(config, 8)
    assert result["devices"] == 8
    assert result["kv_cache"] == (8, 32)
    created = created_bytes(config)
    assert {k: result["per_device"][k] for k in created} == created
    assert created["model state"] > 0  # the routing bias is planned too


def test_kv_cache_of_scanned_layers_splits_its_rows():
    """Scanned layers stack the cache on a leading layer axis: the rows are dimension 1."""
    config = config_for(data=2, expert=4)
    config.model.scan_layers = True
    cfg = ModelConfig.from_config(config.model)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    make_cache = lambda: transformer.init_cache(cfg, 8, 32)
    cache_sh = memory.cache_shardings(cfg, jax.eval_shape(make_cache), mesh)
    cache = jax.jit(make_cache, out_shardings=cache_sh)()
    assert cache["moe"]["latent"].addressable_shards[0].data.shape == (2, 1, 32, 32)
    planned = memory.plan(config, 8)["per_device"]["kv cache"]
    assert planned == sharding.addressable_bytes(cache)


def test_routed_expert_params_per_device_shrink_by_ep():
    routed = {
        ep: memory.plan(config_for(data=8 // ep, expert=ep), 8)["per_device"]["  routed experts"]
        for ep in (1, 2, 4, 8)
    }
    assert routed[1] > 0
    for ep in (2, 4, 8):
        assert routed[ep] * ep == routed[1]
    # Planning for more devices than this host has uses an abstract mesh of that shape.
    config = config_for(data=-1, expert=8)
    config.train.batch_size = 16  # a row for each of the 16 batch shards
    big = memory.plan(config, 16)
    assert big["devices"] == 16 and big["mesh"]["data"] == 2
    assert big["per_device"]["  routed experts"] == routed[8]


def test_activation_estimate_splits_over_the_batch_axes():
    one = memory.plan(config_for(), 1)["per_device"]["activations (est.)"]
    eight = memory.plan(config_for(data=8), 8)["per_device"]["activations (est.)"]
    assert one > 0
    assert eight == pytest.approx(one / 8, rel=1e-6)


def test_errors_name_the_config_key():
    with pytest.raises(ValueError, match="needs 16 devices; there are 8"):
        memory.plan(config_for(data=4, expert=4), 8)
    config = config_for(data=8)
    config.train.batch_size = 4
    with pytest.raises(ValueError, match=r"config.train.batch_size/grad_accum=4 rows"):
        memory.plan(config, 8)
    config = config_for(data=8)
    config.train.grad_accum = 3
    with pytest.raises(ValueError, match="divisible by config.train.grad_accum=3"):
        memory.plan(config, 8)
    with pytest.raises(ValueError, match="cache_rows=6 rows"):
        memory.plan(config_for(data=8), 8, cache_rows=6)
