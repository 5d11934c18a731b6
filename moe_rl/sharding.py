"""Meshes, logical-axis rules and shardings (`jax.sharding`), from one CPU to a TPU pod.

`config.mesh` names the size of four mesh axes (-1 = the devices left over):

    data    pure data parallelism: batch rows split, parameters replicated
    fsdp    batch rows split and parameters/optimizer state split on their 'embed' dimension
            (gathered for each use: ZeRO-3 / FSDP)
    expert  expert parallelism: routed experts split (each device holds E/EP of them; tokens
            travel to them inside `jax.shard_map`, models/moe.py), batch rows split too
    tensor  Megatron-style: heads, MLP hidden units and the vocabulary split

Every parameter carries logical axis names (models/layers.py); RULES maps them to mesh axes.
Shardings are computed before anything is allocated: `state_shardings` gives the train state's
NamedShardings from `jax.eval_shape`, and `jit(init, out_shardings=...)` creates the state
already split. A mesh that does not fit the devices, or a mesh axis that does not divide the
dimension it splits, is a ValueError naming the config key and the parameter.
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


def _path(kp) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in kp)


def check_divisible(abstract, specs, mesh: Mesh, what: str = "model") -> None:
    """Every split dimension is a multiple of its mesh axis size; otherwise a ValueError naming
    the array, the dimension and the mesh axis."""
    sizes = dict(mesh.shape)
    flat_specs = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0])
    for kp, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        spec = flat_specs.get(kp)
        if spec is None:
            continue
        for dim, axis in enumerate(spec):
            axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
            n = math.prod(sizes[a] for a in axes)
            if n > 1 and leaf.shape[dim] % n:
                raise ValueError(
                    f"{what} array {_path(kp)} of shape {tuple(leaf.shape)}: dimension {dim} "
                    f"({leaf.shape[dim]}) is not divisible by config.mesh.{'x'.join(axes)}={n}"
                )


def _is_spec(x) -> bool:
    return isinstance(x, P)


def model_specs(cfg, rules: Mapping[str, str | None] = RULES):
    """(param specs, model-state specs) in mesh axes, the structure of `transformer.init`."""
    from moe_rl.models import transformer

    logical_params, logical_state = transformer.logical_axes(cfg)
    to_mesh = lambda tree: jax.tree.map(lambda s: spec_for(s, rules), tree, is_leaf=_is_spec)
    return to_mesh(logical_params), to_mesh(logical_state)


def like_params(tree, param_specs, params_abstract):
    """Specs for a tree that holds copies of the params inside it (optimizer moments): a leaf
    whose key path ends with a parameter's path and has its shape gets that parameter's spec;
    everything else (step counts, scalars) is replicated."""
    by_path = {
        tuple(kp): (spec, leaf.shape)
        for (kp, spec), (_, leaf) in zip(
            jax.tree_util.tree_flatten_with_path(param_specs, is_leaf=_is_spec)[0],
            jax.tree_util.tree_flatten_with_path(params_abstract)[0],
            strict=True,
        )
    }
    depth = max((len(k) for k in by_path), default=0)

    def spec(kp, leaf):
        kp = tuple(kp)
        for n in range(min(depth, len(kp)), 0, -1):
            hit = by_path.get(kp[-n:])
            if hit is not None and hit[1] == leaf.shape:
                return hit[0]
        return P()

    return jax.tree_util.tree_map_with_path(spec, tree)


def state_shardings(abstract_state, cfg, mesh: Mesh, rules=RULES):
    """NamedShardings of a `lm.TrainState` (params, optimizer state, model state; step and rng
    replicated), checked for divisibility."""
    param_specs, state_specs = model_specs(cfg, rules)
    check_divisible(abstract_state.params, param_specs, mesh)
    specs = abstract_state.replace(
        step=P(),
        params=param_specs,
        opt_state=like_params(abstract_state.opt_state, param_specs, abstract_state.params),
        model_state=state_specs,
        rng=P(),
    )
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def with_shardings(abstract, shardings):
    """`jax.ShapeDtypeStruct`s carrying shardings: a restore target that Orbax reads split."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Whole on every device: e.g. metrics, which every process can then read."""
    return NamedSharding(mesh, P())


def model_shardings(cfg, mesh: Mesh, rules=RULES):
    """(params, model_state) NamedShardings, e.g. for the sampler (with SAMPLING_RULES)."""
    param_specs, state_specs = model_specs(cfg, rules)
    named = lambda t: jax.tree.map(lambda s: NamedSharding(mesh, s), t, is_leaf=_is_spec)
    return named(param_specs), named(state_specs)


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
