"""The mesh vocabulary: axis names, logical-axis rules, meshes and batch shardings.

Below the model (models/moe.py reads BATCH_AXES); `moe_rl.sharding` builds the model-aware
specs on top of it. See `moe_rl.sharding` for what each mesh axis does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")  # the mesh axes that split batch rows (and tokens)

# logical axis name -> mesh axis (or None: replicated)
RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
    "expert": "expert",
    "kv": None,
    "q_lora": None,
    "kv_lora": None,
    "layers": None,
}
# Decoding reads every weight once per token: gathering FSDP shards each step costs more than
# holding the weights, so the sampler may keep them whole on 'fsdp'.
SAMPLING_RULES = {**RULES, "embed": None}


def mesh_shape(mesh_config: Mapping, num_devices: int) -> dict[str, int]:
    """{axis: size} for the four axes; at most one -1, which takes the devices left over.
    Without a -1 the mesh may use fewer devices than there are (the first ones)."""
    sizes = {a: int(mesh_config.get(a, 1)) for a in AXES}
    unknown = set(mesh_config) - set(AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; allowed: {AXES}")
    free = [a for a, n in sizes.items() if n == -1]
    bad = [a for a, n in sizes.items() if n == 0 or n < -1]
    if bad or len(free) > 1:
        raise ValueError(
            f"config.mesh={sizes}: each axis is a positive size, at most one is -1 (the rest "
            f"of the {num_devices} devices)"
        )
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh={sizes}: {num_devices} devices are not divisible by the fixed "
                f"axes' product {fixed}, so config.mesh.{free[0]}=-1 has no size"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) > num_devices:
        raise ValueError(
            f"config.mesh={sizes} needs {math.prod(sizes.values())} devices; there are "
            f"{num_devices} (jax.devices()); use -1 for one axis to take the rest"
        )
    return sizes


def make_mesh(mesh_config: Mapping, devices=None) -> Mesh:
    """The device mesh of `config.mesh` (Auto axes: XLA propagates shardings between the
    explicitly sharded inputs and outputs)."""
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    return jax.make_mesh(
        shape,
        AXES,
        axis_types=(AxisType.Auto,) * len(AXES),
        devices=list(devices)[: math.prod(shape)],
    )


def mesh_from_config(config: ml_collections.ConfigDict) -> Mesh | None:
    """config.mesh's mesh, or None when there is no mesh block or it spans one device."""
    if "mesh" not in config:
        return None
    mesh = make_mesh(config.mesh.to_dict() if hasattr(config.mesh, "to_dict") else config.mesh)
    return mesh if mesh.size > 1 else None


def spec_for(logical: P, rules: Mapping[str, str | None] = RULES) -> P:
    """Mesh-axis PartitionSpec of a logical one; each mesh axis used at most once."""
    used, out = set(), []
    for name in logical:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        axis = rules[name]
        out.append(None if axis in used else axis)
        used.add(axis)
    return P(*out)


def replicated(mesh: Mesh) -> NamedSharding:
    """Whole on every device: e.g. metrics, which every process can then read."""
    return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if dict(mesh.shape).get(a, 1) > 1)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Rows split over the batch axes; `leading` unsplit dimensions before the rows (e.g. the
    gradient-accumulation axis of [accum, rows, L] batches)."""
    return NamedSharding(mesh, P(*([None] * leading), batch_axes(mesh)))


def check_batch(rows: int, mesh: Mesh, key: str) -> None:
    n = math.prod(dict(mesh.shape)[a] for a in batch_axes(mesh))
    if rows % n:
        raise ValueError(
            f"{key}={rows} rows do not split over the mesh's batch axes "
            f"{batch_axes(mesh)} ({n} shards): use a multiple of {n}"
        )


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """A host batch (the whole global batch, the same on every process: each process reads the
    data in the same order) as global arrays; each process uploads only its devices' slices,
    so the result is the same for one process or many, for any mesh."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
    return out


def addressable_bytes(tree) -> int:
    """Bytes of the shards of `tree` held by this process's first device."""
    device = jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total
