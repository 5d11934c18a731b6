"""Memory planner: bytes per device of a training run's state, activations and KV cache.

    python -m moe_rl.memory --config=experiments/pretrain_moe.py --config.mesh.expert=4 \
        --num_devices=8

Nothing is allocated. The train state is traced with `jax.eval_shape` and placed with the same
`sharding.state_shardings` the trainer uses, so the params / optimizer-state / model-state rows
are exact: each is the sum over arrays of `NamedSharding.shard_shape` x itemsize (the tests
compare them with the bytes one device holds after creating the sharded state). The optimizer
is the real one (`train_state.make_optimizer`: AdamW moments, clipping and schedule counters).

Gradients and activations are ESTIMATES from a closed-form count of the tensors a train step
keeps for its backward pass (see `activation_bytes`); XLA may fuse some away or keep extra
temporaries. The KV cache is exact for `transformer.init_cache` with rows split over the mesh's
batch axes.

`num_devices` may exceed the devices of this host (planning a pod from a laptop): the mesh is
then an `AbstractMesh` of the same shape, which shardings and shard shapes accept.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from moe_rl import sharding
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig

MIB = 2**20
# sparse_dispatch pads each expert's rows to groups of capacity_factor x the mean load.
DISPATCH_CAPACITY = 1.25


def make_plan_mesh(mesh_config, num_devices: int | None = None):
    """The mesh of `config.mesh` on `num_devices` devices (default: jax.device_count()).

    With enough local devices this is `sharding.make_mesh` on the first `num_devices`; with more
    devices than this host has, an AbstractMesh of the same axis sizes (shapes only)."""
    mesh_config = dict(mesh_config or {})
    num_devices = jax.device_count() if num_devices is None else int(num_devices)
    if num_devices < 1:
        raise ValueError(f"num_devices={num_devices} must be >= 1")
    sizes = sharding.mesh_shape(mesh_config, num_devices)  # ValueError naming config.mesh
    if num_devices <= jax.device_count():
        return sharding.make_mesh(mesh_config, jax.devices()[:num_devices])
    shape = tuple(sizes[a] for a in sharding.AXES)
    return AbstractMesh(shape, sharding.AXES, axis_types=(AxisType.Auto,) * len(shape))


def shard_bytes(abstract_tree, shardings) -> int:
    """Bytes one device holds of `abstract_tree` placed with `shardings` (evenly split arrays:
    every device holds the same)."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True):
        total += math.prod(sh.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    return total


def routed_expert_bytes(abstract_params, param_shardings) -> int:
    """Per-device bytes of the routed experts' weights (the leaves named experts_*): the part
    that expert parallelism divides by EP."""
    leaves, shards = [], []
    flat_sh = jax.tree.leaves(param_shardings)
    for (kp, leaf), sh in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0], flat_sh, strict=True
    ):
        last = kp[-1]
        if str(getattr(last, "key", last)).startswith("experts_"):
            leaves.append(leaf)
            shards.append(sh)
    return shard_bytes(leaves, shards)


def cache_shardings(cfg: ModelConfig, abstract_cache, mesh):
    """Shardings of a `transformer.init_cache` tree: rows over the mesh's batch axes (the
    sampler's batch sharding), the cache index replicated. Scanned layers stack the cache on a
    leading layer axis, so there the rows are the second dimension."""
    rows = sharding.batch_axes(mesh) or None

    def spec(kp, leaf):
        top = str(getattr(kp[0], "key", kp[0]))
        if leaf.ndim == 0:
            return NamedSharding(mesh, P())
        lead = 1 if top in ("dense", "moe") and cfg.scan_layers else 0
        return NamedSharding(mesh, P(*([None] * lead), rows))

    return jax.tree_util.tree_map_with_path(spec, abstract_cache)


def _batch_shards(mesh) -> int:
    sizes = dict(mesh.shape)
    return math.prod(sizes[a] for a in sharding.batch_axes(mesh))


def _layer_elements_per_token(cfg: ModelConfig, moe: bool, seq_len: int, tp: int, ep: int):
    """(compute-dtype elements, float32 elements) one layer keeps per local token; see
    `activation_bytes`."""
    D, H = cfg.hidden_size, max(cfg.num_attention_heads // tp, 1)
    act = 4 * D  # layer input, normed input, residual after attention, normed FFN input
    f32 = 2 * H * seq_len  # attention scores and softmax probabilities (float32)
    if cfg.attention == "mla":
        dn, dr, dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        act += cfg.q_lora_rank or 0  # compressed query
        act += cfg.kv_lora_rank + dr  # compressed kv latent + shared roped key
        act += H * (dn + dr)  # queries
        act += H * (dn + dr) + H * dv  # decompressed keys and values
        act += H * dv  # attention output before o_proj
    else:
        hd, kv = cfg.head_dim, max(cfg.num_key_value_heads // tp, 1)
        act += 2 * H * hd + 2 * kv * hd  # q, attention output, k, v
    if not moe:
        return act + 3 * cfg.intermediate_size // tp, f32
    F, E, K = cfg.moe_intermediate_size // tp, cfg.n_routed_experts, cfg.num_experts_per_tok
    f32 += 2 * E  # router logits and scores
    act += 3 * F * cfg.n_shared_experts  # shared experts: gate, up, gated product
    act += (ep - 1) * D  # the other tokens all-gathered over the expert group
    act += DISPATCH_CAPACITY * K * (2 * D + 3 * F)  # routed copies: in, gate/up/product, out
    return act, f32


def activation_bytes(cfg: ModelConfig, rows: int, seq_len: int, mesh) -> int:
    """ESTIMATE of the activations one device keeps between forward and backward of one
    microbatch of `rows` local rows x `seq_len` tokens (T = rows * seq_len local tokens).

    Per token, with H_t = heads / tensor, F_t = widths / tensor, V_t = vocab / tensor,
    a = compute-dtype bytes, 4 = float32:
      each layer       a * (4 D                       norms and residuals
                            + MLA: q_lora + kv_lora + rope + 2 H_t (dn+dr) + 2 H_t dv
                              (GQA: 2 H_t hd + 2 KV_t hd)
                            + dense FFN: 3 F_t,  MoE: 3 F_t n_shared + (EP-1) D
                              + 1.25 K (2 D + 3 F_t)  (routed copies, dispatch padding))
                       + 4 * (2 H_t L  (scores + probabilities)  + MoE: 2 E (router))
      output heads     (1 + MTP depth) * 2 * 4 V_t  (float32 logits and log-softmax)
      each MTP module  a * 3 D + one layer
    With model.remat a layer keeps only its input (a * D) and one layer's activations are live
    again while it is recomputed. Not counted: XLA temporaries, fusion savings, the gradients
    flowing back (about one layer's worth), the batch itself. For scale: the tiny model at
    16 x 256 tokens on one CPU device is estimated at 226 MiB; XLA:CPU's compiled step
    reported 308 MiB of temporaries (`compile().memory_analysis()`, gradients included).
    """
    sizes = dict(mesh.shape)
    tp, ep = sizes.get("tensor", 1), sizes.get("expert", 1)
    a = jnp.dtype(cfg.compute_dtype).itemsize
    T = rows * seq_len

    def layer(moe):
        act, f32 = _layer_elements_per_token(cfg, moe, seq_len, tp, ep)
        return a * act + 4 * f32

    layers = [layer(False)] * cfg.num_dense_layers + [layer(True)] * cfg.num_moe_layers
    mtp = [a * 3 * cfg.hidden_size + layer(cfg.is_moe)] * cfg.num_nextn_predict_layers
    kept = layers + mtp
    if cfg.remat:
        kept = [a * cfg.hidden_size] * len(kept) + [max(kept)]
    heads = (1 + cfg.num_nextn_predict_layers) * 2 * 4 * math.ceil(cfg.vocab_size / tp)
    return int(T * (sum(kept) + heads))


def _train_block(config: ml_collections.ConfigDict):
    if "train" not in config:
        raise ValueError("config.train is required (batch_size, seq_len, grad_accum)")
    t = config.train
    for key in ("batch_size", "seq_len"):
        if key not in t or t[key] <= 0:
            raise ValueError(f"config.train.{key} must be a positive integer")
    accum = int(t.get("grad_accum", 1))
    if accum <= 0 or t.batch_size % accum:
        raise ValueError(
            f"config.train.batch_size={t.batch_size} must be divisible by "
            f"config.train.grad_accum={accum} (> 0)"
        )
    return t, accum


def sampling_shape(config: ml_collections.ConfigDict) -> tuple[int, int, str]:
    """(rows, slots, config key) of the KV cache to plan: config.eval.batch_size x
    eval.num_samples rows when the config evaluates by sampling, else train.batch_size; slots =
    train.seq_len (prompt plus completion fit the trained context)."""
    t = config.train
    if "eval" in config and "batch_size" in config.eval:
        rows = config.eval.batch_size * config.eval.get("num_samples", 1)
        key = "config.eval.batch_size x config.eval.num_samples"
    else:
        rows, key = t.batch_size, "config.train.batch_size"
    return int(rows), int(t.seq_len), key


def plan(
    config: ml_collections.ConfigDict,
    num_devices: int | None = None,
    cache_rows: int | None = None,
    cache_len: int | None = None,
) -> dict:
    """Per-device bytes of a run of `config` on `num_devices` devices (default: all of them).

    Returns {'mesh': {axis: size}, 'devices': devices the mesh uses, 'per_device': {item:
    bytes}, 'kv_cache': (rows, slots), 'microbatch_rows': local rows per microbatch}. Items:
    'params' (of which 'routed experts'), 'optimizer state', 'model state', 'train state'
    (those plus step and rng), 'gradients (est.)', 'activations (est.)', 'train step (est.)'
    (their sum), 'kv cache'. `cache_rows` / `cache_len` override `sampling_shape`.
    """
    from moe_rl import hf
    from moe_rl.train import train_state  # the training stack (optax, data) only when planning

    config = hf.with_hf_model(config)  # a Hugging Face init_checkpoint's own architecture
    cfg = ModelConfig.from_config(config.model)
    t, accum = _train_block(config)
    mesh = make_plan_mesh(config.get("mesh"), num_devices)
    micro = t.batch_size // accum
    sharding.check_batch(micro, mesh, "config.train.batch_size/grad_accum")

    tx = train_state.make_optimizer(config.optim, int(t.get("num_steps", 1)))
    abstract = jax.eval_shape(lambda: train_state.init(cfg, tx, 0))
    shardings = sharding.state_shardings(abstract, cfg, mesh)
    part = lambda name: shard_bytes(getattr(abstract, name), getattr(shardings, name))

    params = part("params")
    # The step sums each microbatch's gradient into an accumulator of the params' shape.
    grads = params * (2 if accum > 1 else 1)
    activations = activation_bytes(cfg, micro // _batch_shards(mesh), t.seq_len, mesh)
    state = shard_bytes(abstract, shardings)

    rows, slots, key = sampling_shape(config)
    rows, slots = cache_rows or rows, cache_len or slots
    sharding.check_batch(rows, mesh, key if cache_rows is None else "cache_rows")
    cache = jax.eval_shape(lambda: transformer.init_cache(cfg, rows, slots))
    per_device = {
        "params": params,
        "  routed experts": routed_expert_bytes(abstract.params, shardings.params),
        "optimizer state": part("opt_state"),
        "model state": part("model_state"),
        "train state": state,
        "gradients (est.)": grads,
        "activations (est.)": activations,
        "train step (est.)": state + grads + activations,
        "kv cache": shard_bytes(cache, cache_shardings(cfg, cache, mesh)),
    }
    return {
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "per_device": per_device,
        "kv_cache": (rows, slots),
        "microbatch_rows": micro // _batch_shards(mesh),
    }


def format_table(result: dict) -> str:
    """One row per item: MiB per device and summed over the mesh's devices."""
    n = result["devices"]
    mesh = " x ".join(f"{a}={s}" for a, s in result["mesh"].items() if s > 1) or "one device"
    rows, slots = result["kv_cache"]
    lines = [
        f"mesh {mesh} ({n} devices); {result['microbatch_rows']} rows per device per "
        f"microbatch; kv cache {rows} rows x {slots} slots",
        f"{'':22s}{'bytes/device':>14s}{'MiB/device':>12s}{f'MiB x {n} devices':>18s}",
    ]
    for name, b in result["per_device"].items():
        lines.append(f"{name:22s}{b:14,d}{b / MIB:12.3f}{b * n / MIB:18.3f}")
    return "\n".join(lines)


def define_flags() -> None:
    """The command line's flags, defined only when run as a script: importing this module must
    not claim --config, which moe_rl.main defines too."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_integer(
        "num_devices", None, "Devices to plan for (default: jax.device_count()); may exceed them."
    )
    flags.DEFINE_integer("cache_rows", None, "KV-cache rows (default: see plan).")
    flags.DEFINE_integer("cache_len", None, "KV-cache slots (default: train.seq_len).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if f.config is None:
        raise app.UsageError("--config=experiments/<name>.py is required")
    try:
        result = plan(f.config, f.num_devices, f.cache_rows, f.cache_len)
    except ValueError as e:
        raise app.UsageError(f"{e}\n(--num_devices=N plans for N devices)") from e
    print(format_table(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
