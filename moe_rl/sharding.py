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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# The mesh vocabulary lives below the model (moe_rl/mesh.py); its names are part of this
# module's interface too.
from moe_rl.mesh import (  # noqa: F401
    AXES,
    BATCH_AXES,
    RULES,
    SAMPLING_RULES,
    addressable_bytes,
    batch_axes,
    batch_sharding,
    check_batch,
    make_mesh,
    mesh_from_config,
    mesh_shape,
    put_batch,
    replicated,
    spec_for,
)
from moe_rl.models import transformer


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
    """NamedShardings of a `train_state.TrainState` (params, optimizer state, model state; step
    and rng replicated), checked for divisibility."""
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


def model_shardings(cfg, mesh: Mesh, rules=RULES):
    """(params, model_state) NamedShardings, e.g. for the sampler (with SAMPLING_RULES)."""
    param_specs, state_specs = model_specs(cfg, rules)
    named = lambda t: jax.tree.map(lambda s: NamedSharding(mesh, s), t, is_leaf=_is_spec)
    return named(param_specs), named(state_specs)
