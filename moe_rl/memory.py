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
then an `AbstractMesh` of the same shape, which shardings and shard shapes accept. The model's
'auto' choices are resolved for this host's backend (models/backend.py): `model.dtype='auto'`
is float32 on a CPU, so a laptop plans an accelerator's bfloat16 activations at twice their
bytes; `--config.model.dtype=bfloat16` plans them as the accelerator will run them.

GRPO and distillation configs are read too (`config.recipe` 'r1_zero', 'r1', 'distill';
`plan_recipe`), stage by stage as the recipes run them:

    python -m moe_rl.memory --config=experiments/r1_zero.py [--prompt_len=N | --workdir=DIR]
    python -m moe_rl.memory --config=experiments/distill.py

GRPO holds the policy's train state (`train_state.create` in the trainer's shardings), the
reference weights when grpo.beta > 0 and with grpo.off_policy_steps=1 the sampling weights,
all exact; its phases are the rollout (the sampler's KV cache as `sampling.generate` makes
it: prefill at num_questions rounded up to a power of two, repeated x num_generations, prompt
bucket + max_new_tokens slots, and its outputs; exact, rows split over the batch axes), the
reference / pi_old forward over the whole rollout and one minibatch update of packed rows of
prompt + G completions (estimates). The prompt bucket comes from the task's first training
prompts under the run's tokenizer; a BPE the run learns first is replaced by the byte
tokenizer, an upper bound (--prompt_len or --workdir=<a run's workdir> for the real one).
Distillation: the teacher's R1-Zero run, its rejection sampling, the student's pretraining and
SFT / KD / GKD, the teacher's weights held through the student's stages (the recipe keeps
them). Stages run one after another; a stage's phases one at a time.
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
from moe_rl.models import attention, transformer
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
    if cfg.hc_mult:  # mHC, per sublayer: the N streams in and out, their float32 normalised copy
        act += 2 * 2 * cfg.hc_mult * D
        f32 += 2 * cfg.hc_mult * D
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
        kept = [a * cfg.hidden_size * max(cfg.hc_mult, 1)] * len(kept) + [max(kept)]
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


# ----------------------------------------------------------------------------------------------
# The recipes that chain stages: R1-Zero (GRPO), R1, distillation.

# config.recipe -> what plans it; 'pretrain' and 'sft' are `plan` (one train block).
TRAIN_RECIPES = ("pretrain", "sft")
STAGED_RECIPES = ("r1_zero", "r1", "distill")
PROMPT_SAMPLE = 256  # training questions whose longest prompt sizes the sampler's prompt bucket


def _train_config(block, model, init_checkpoint: str = "") -> ml_collections.ConfigDict:
    """A pretrain/sft-style config (train, optim, model; mesh if the block has one) of a stage."""
    c = ml_collections.ConfigDict(ml_collections.ConfigDict(block).to_dict())
    c.model = ml_collections.ConfigDict(ml_collections.ConfigDict(model).to_dict())
    c.init_checkpoint = init_checkpoint
    return c


def _train_stage(name: str, config, num_devices, held=None) -> dict:
    """A pretraining or SFT stage from `plan`: its train state held, one train step's phase;
    `held` adds what the recipe keeps alive beside it (e.g. the distillation teacher)."""
    r = plan(config, num_devices if "mesh" in config else 1)
    d = r["per_device"]
    rest = d["train state"] - d["params"] - d["optimizer state"] - d["model state"]
    return {
        "name": name,
        "mesh": r["mesh"],
        "devices": r["devices"],
        "held": {
            **(held or {}),
            "params": d["params"],
            "optimizer state": d["optimizer state"],
            "model state": d["model state"],
            "step and rng": rest,
        },
        "phases": {
            f"train step ({r['microbatch_rows']} rows x {config.train.seq_len} tokens)": {
                "gradients (est.)": d["gradients (est.)"],
                "activations (est.)": d["activations (est.)"],
            }
        },
    }


def prompt_tokens(task_block, tokenizer_name: str, num: int = PROMPT_SAMPLE, seed=None):
    """(longest prompt in tokens, how it was measured) of the first `num` training questions of
    `task_block` under its template, encoded as the run encodes them (`evaluate.prompts_for`).
    A BPE the run learns first ('bpe:...') is not learned here: the byte tokenizer's length,
    an upper bound (every BPE token is at least one byte), stands in."""
    from moe_rl import evaluate
    from moe_rl.data import tokenizers
    from moe_rl.data.tasks import task_from_config

    how = f"tokenizer {tokenizer_name!r}"
    if tokenizer_name.startswith("bpe:"):
        how = (
            f"byte-tokenizer upper bound: the BPE {tokenizer_name!r} is learned at run time; "
            "--workdir=<a run's workdir> or --prompt_len=N for the real length"
        )
        tokenizer_name = "byte"
    tok = tokenizers.get_tokenizer(tokenizer_name)
    task = task_from_config(task_block)
    examples = task.examples("train", num, seed=task_block.seed if seed is None else seed)
    _, ids = evaluate.prompts_for(tok, examples, task_block.template, task_block.think_opened)
    return max(map(len, ids)), f"longest of {len(ids)} training prompts, {how}"


def run_tokenizer_name(config, workdir: str | None) -> str:
    """The tokenizer an R1-Zero-style run samples with (`grpo.base_tokenizer`); for a base the
    run pretrains first, the one it wrote into <workdir>/base, else the one it will learn
    (config.pretrain.data.tokenizer)."""
    from moe_rl.train import grpo

    if config.tokenizer != "base" or config.init_checkpoint:
        return grpo.base_tokenizer(config, "")
    if workdir:
        name = grpo.base_tokenizer(config, workdir)
        if name != "byte":
            return name
    return config.pretrain.data.tokenizer if "pretrain" in config else "byte"


def sampler_bytes(
    cfg: ModelConfig,
    prompts: int,
    n: int,
    prompt_len: int,
    sp,
    mesh,
    key: str,
    record_routing: bool = False,
    keep_mask: bool = False,
) -> dict:
    """Per-device bytes of one `sampling.generate` call on `prompts` prompts of up to
    `prompt_len` tokens, `n` samples each: the prefill's KV cache (rows = the prompts rounded
    up as `generate` does), the decode cache (`transformer.repeat_cache` x n) and the outputs
    (`sampling.Samples`), rows split over the mesh's batch axes. Exact for these arrays."""
    from moe_rl import sampling

    Q = sampling.bucket(prompts, minimum=1, step=1 << 30)
    P, N = sampling.bucket(prompt_len), sp.max_new_tokens
    B = Q * n
    sharding.check_batch(Q, mesh, key)
    prefill = jax.eval_shape(lambda: transformer.init_cache(cfg, Q, P + N))
    what = "kv cache, prefill" if n > 1 else "kv cache"
    items = {
        f"{what} ({Q} rows x {P}+{N} slots)": shard_bytes(
            prefill, cache_shardings(cfg, prefill, mesh)
        )
    }
    if n > 1:
        decode = jax.eval_shape(
            lambda: transformer.repeat_cache(cfg, transformer.init_cache(cfg, Q, P + N), n)
        )
        items[f"kv cache, decode ({B} rows)"] = shard_bytes(
            decode, cache_shardings(cfg, decode, mesh)
        )
    shards = _batch_shards(mesh)
    out = B * N * (4 + 4) + B * 4  # tokens int32, log-probs float32, lengths int32
    if record_routing:  # the experts of every fed token, completion and prompt
        M, K = cfg.mlp_kinds.count("moe"), cfg.num_experts_per_tok  # hash layers: not recorded
        out += M * K * 4 * (B * N + Q * P)
    if keep_mask:
        out += B * N * cfg.vocab_size  # bool
    items["sampler outputs"] = out // shards
    return items


def forward_bytes(cfg: ModelConfig, rows: int, seq_len: int, mesh) -> int:
    """ESTIMATE of a forward pass without backward (reference / pi_old log-probs, a teacher's
    logits) over `rows` local rows: one layer's activations live at a time, its attention one
    causal query block at a time (`attention.causal_blocks`: float32 scores and probabilities
    of the largest block), plus the float32 logits and log-softmax of every token. For scale:
    R1-Zero's reference forward (`grpo_step.completion_logprobs`, 8 rows x 2048 tokens, one CPU
    device) is planned at 428 MiB with its completion logits; XLA:CPU's compiled function
    reported 348 MiB of temporaries (`compile().memory_analysis()`)."""
    sizes = dict(mesh.shape)
    tp, ep = sizes.get("tensor", 1), sizes.get("expert", 1)
    a = jnp.dtype(cfg.compute_dtype).itemsize
    H = max(cfg.num_attention_heads // tp, 1)
    block = max((hi - lo) * hi for lo, hi in attention.causal_blocks(seq_len))
    layer = 0
    for moe in [False] * bool(cfg.num_dense_layers) + [True] * bool(cfg.num_moe_layers):
        act, f32 = _layer_elements_per_token(cfg, moe, seq_len, tp, ep)
        per_token = a * act + 4 * (f32 - 2 * H * seq_len)  # without the full-length scores
        layer = max(layer, seq_len * per_token + 4 * 2 * H * block)
    logits = seq_len * 2 * 4 * math.ceil(cfg.vocab_size / tp)
    return int(rows * (layer + logits))


def plan_grpo(config, num_devices=None, prompt_len=None, workdir=None, prefix="") -> list[dict]:
    """The stages of recipe 'r1_zero' (moe_rl/recipes/r1_zero.py): the base's pretraining when
    config.init_checkpoint is '', then GRPO (`grpo.train`): held throughout, the policy's train
    state (the real `train_state.create` + `sharding.state_shardings`), the reference weights
    when grpo.beta > 0 (a copy in the model's shardings), with grpo.off_policy_steps=1 the
    sampling weights (`OffPolicyState.sampler`); and, one at a time, the phases of a step:
    rollout (the sampler at num_questions prompts x num_generations), the reference / pi_old
    forward over the whole rollout, one minibatch update; and the held-out evaluation (of the
    base before the state exists, of the policy after: the held rows make it an upper bound).
    With off_policy_steps=1 rollout and update run at once: one phase. For scale, experiments/
    r1_zero.py with its 161-token prompts (--prompt_len=161) on one CPU device: the update of 2
    rows x 2048 tokens is planned at 854 MiB (gradients, activations, loss logits); XLA:CPU's
    compiled `grpo_step.make_update` reported 826 MiB of temporaries."""
    from moe_rl import hf, sampling
    from moe_rl.train import grpo_loss, train_state

    config = hf.with_hf_model(config)
    cfg = ModelConfig.from_config(config.model)
    g = config.grpo
    lc = grpo_loss.LossConfig.from_config(g)
    stages = []
    if not config.init_checkpoint and "pretrain" in config:
        pre = _train_config(config.pretrain, config.model)
        stages.append(_train_stage(f"{prefix}base pretraining (config.pretrain)", pre, num_devices))

    mesh = make_plan_mesh(config.get("mesh"), num_devices)
    sharding.check_batch(g.num_questions, mesh, "config.grpo.num_questions")
    G = g.num_generations
    mb_rows = g.minibatch_size // G
    sharding.check_batch(mb_rows, mesh, "config.grpo.minibatch_size/num_generations")
    updates = g.num_iterations * (g.num_questions * G // g.minibatch_size)
    tx = train_state.make_optimizer(config.optim, g.num_steps * updates)

    def fresh():
        params, model_state = transformer.init(cfg, jax.random.key(0))
        return train_state.create(params, model_state, tx, jax.random.key(config.seed))

    abstract = jax.eval_shape(fresh)
    state_sh = sharding.state_shardings(abstract, cfg, mesh)
    part = lambda name: shard_bytes(getattr(abstract, name), getattr(state_sh, name))
    weights = (abstract.params, abstract.model_state)
    weight_bytes = shard_bytes(weights, sharding.model_shardings(cfg, mesh))
    held = {
        "policy params": part("params"),
        "policy optimizer state": part("opt_state"),
        "policy model state": part("model_state"),
        "step and rng": part("step") + part("rng"),
    }
    if lc.beta > 0:
        held[f"reference params + state (beta={lc.beta:g})"] = weight_bytes
    if g.off_policy_steps:
        held["sampling weights (off_policy_steps=1)"] = weight_bytes

    if prompt_len is None:
        longest, how = prompt_tokens(config.task, run_tokenizer_name(config, workdir))
    else:
        longest, how = int(prompt_len), "--prompt_len"
    P = sampling.bucket(longest)
    sp = sampling.SamplingParams.from_config(config.sampling)
    N = sp.max_new_tokens
    rollout = sampler_bytes(
        cfg,
        g.num_questions,
        G,
        longest,
        sp,
        mesh,
        "config.grpo.num_questions",
        record_routing=cfg.is_moe,
        keep_mask=g.keep_sampling_mask,
    )
    L = P + G * N  # a packed row: the prompt and its G completions (rollout.pack_groups)
    shards = _batch_shards(mesh)
    V_t = math.ceil(cfg.vocab_size / dict(mesh.shape).get("tensor", 1))
    params = held["policy params"]
    update = {
        "gradients (est.)": params,
        "activations (est.)": activation_bytes(cfg, mb_rows // shards, L, mesh),
        # completion_logits' gather, float32 log-softmax and the entropy's p * log p
        "policy-loss logits (est.)": 3 * 4 * (mb_rows // shards) * G * N * V_t,
    }
    phases = {}
    if g.off_policy_steps:
        phases["rollout and update at once (off_policy_steps=1)"] = {**rollout, **update}
    else:
        phases[f"rollout ({g.num_questions} prompts x {G} samples)"] = rollout
    if lc.beta > 0 or g.old_logprobs == "recompute":
        rows = g.num_questions // shards
        phases[f"reference / pi_old forward ({g.num_questions} rows x {L} tokens)"] = {
            "forward (est.)": forward_bytes(cfg, rows, L, mesh) + 2 * 4 * rows * G * N * V_t
        }
    if not g.off_policy_steps:
        phases[f"update ({mb_rows} rows x {L} tokens)"] = update
    e = config.eval
    esp = sampling.SamplingParams.from_config(e.sampling, "eval.sampling")
    phases[f"held-out evaluation ({e.batch_size} rows)"] = sampler_bytes(
        cfg, e.batch_size, 1, longest, esp, mesh, "config.eval.batch_size"
    )
    stages.append(
        {
            "name": f"{prefix}GRPO (config.grpo)",
            "mesh": dict(mesh.shape),
            "devices": mesh.size,
            "held": held,
            "phases": phases,
            "note": f"prompts of up to {longest} tokens, bucket {P} ({how})",
        }
    )
    return stages


def plan_r1(config, num_devices=None, prompt_len=None, workdir=None) -> list[dict]:
    """The stages of recipe 'r1' (moe_rl/recipes/r1.py): base pretraining, cold-start SFT,
    GRPO (the final GRPO stage is the same), rejection sampling of the RL model, SFT."""
    from moe_rl import sampling

    stages = plan_grpo(config, num_devices, prompt_len, workdir)
    grpo_stage = stages.pop()
    stages.append(
        _train_stage(
            "cold-start SFT (config.cold_start)",
            _train_config(config.cold_start, config.model),
            num_devices,
        )
    )
    stages.append(grpo_stage)
    cfg = ModelConfig.from_config(config.model)
    mesh = make_plan_mesh(None, 1)  # evaluate.load_model: one device
    weights = jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))
    longest = prompt_len or prompt_tokens(config.task, run_tokenizer_name(config, workdir))[0]
    r = config.rejection
    sp = sampling.SamplingParams.from_config(r.sampling, "rejection.sampling")
    stages.append(
        {
            "name": "rejection sampling (config.rejection)",
            "mesh": dict(mesh.shape),
            "devices": 1,
            "held": {
                "RL model params + state": shard_bytes(weights, sharding.model_shardings(cfg, mesh))
            },
            "phases": {
                f"sampling ({config.eval.batch_size} rows)": sampler_bytes(
                    cfg, config.eval.batch_size, 1, longest, sp, mesh, "config.eval.batch_size"
                )
            },
        }
    )
    stages.append(
        _train_stage(
            "SFT of the base (config.sft)", _train_config(config.sft, config.model), num_devices
        )
    )
    return stages


def plan_distill(config, num_devices=None, prompt_len=None, workdir=None) -> list[dict]:
    """The stages of recipe 'distill' (moe_rl/recipes/distill.py): the teacher's R1-Zero run
    when teacher_workdir is '', its rejection sampling, the student's pretraining when
    student.init_checkpoint is '', the student's SFT / logit KD / GKD. The recipe keeps the
    teacher's weights (loaded on one device) alive through the student's stages; logit_kd and
    gkd add the teacher's forward, gkd the student's own sampling."""
    from moe_rl import sampling
    from moe_rl.train.distill import with_hf_models

    config = with_hf_models(config)
    d, teacher = config.distill, config.teacher
    stages = []
    teacher_dir = config.teacher_workdir  # where the recipe reads the teacher's tokenizer
    if not teacher_dir:  # its R1-Zero run comes first, into <workdir>/teacher
        teacher_dir = None if workdir is None else f"{workdir}/teacher"
        stages += plan_grpo(teacher, num_devices, prompt_len, teacher_dir, prefix="teacher: ")
    t_cfg = ModelConfig.from_config(teacher.model)
    s_cfg = ModelConfig.from_config(config.student.model)
    one = make_plan_mesh(None, 1)
    t_weights = jax.eval_shape(lambda: transformer.init(t_cfg, jax.random.key(0)))
    teacher_bytes = shard_bytes(t_weights, sharding.model_shardings(t_cfg, one))
    if prompt_len is None:
        tok = run_tokenizer_name(teacher, teacher_dir)
        longest, how = prompt_tokens(teacher.task, tok, d.num_questions, d.question_seed)
    else:
        longest, how = int(prompt_len), "--prompt_len"
    sp = sampling.SamplingParams.from_config(d.sampling, "distill.sampling")
    rows = config.eval.batch_size
    stages.append(
        {
            "name": "teacher's rejection sampling (config.distill)",
            "mesh": dict(one.shape),
            "devices": 1,
            "held": {"teacher params + state": teacher_bytes},
            "note": f"prompts of up to {longest} tokens ({how})",
            "phases": {
                f"sampling ({rows} rows)": sampler_bytes(
                    t_cfg, rows, 1, longest, sp, one, "config.eval.batch_size"
                )
            },
        }
    )
    held = {"teacher params + state (kept by the recipe)": teacher_bytes}
    student_init = config.student.get("init_checkpoint", "")
    if not student_init:
        pre = _train_config(config.student.pretrain, config.student.model)
        stages.append(
            _train_stage("student pretraining (config.student.pretrain)", pre, num_devices, held)
        )
    sft = _train_config(config.student.sft, config.student.model, student_init)
    stage = _train_stage(f"student {d.mode} (config.student.sft)", sft, num_devices, held)
    (phase,) = stage["phases"].values()
    if d.mode != "sft":
        t = config.student.sft.train
        phase["teacher forward (est.)"] = forward_bytes(t_cfg, t.batch_size, t.seq_len, one)
    if d.mode == "gkd":
        ssp = sampling.SamplingParams.from_config(d.student_sampling, "distill.student_sampling")
        for k, v in sampler_bytes(
            s_cfg,
            config.student.sft.train.batch_size,
            1,
            longest,
            ssp,
            one,
            "config.student.sft.train.batch_size",
        ).items():
            phase[f"student sampling: {k}"] = v
    stages.append(stage)
    return stages


def plan_recipe(config, num_devices=None, prompt_len=None, workdir=None) -> dict:
    """Per-device bytes of each stage of `config.recipe` (STAGED_RECIPES; TRAIN_RECIPES are one
    stage of `plan`): {'recipe', 'stages': [{'name', 'mesh', 'devices', 'held': {item: bytes},
    'phases': {phase: {item: bytes}}, 'peak'}], 'peak'}. A stage's arrays are freed before the
    next starts (except what its 'held' names); a stage's phases run one at a time; a stage's
    peak = held + its largest phase. An unknown recipe is a ValueError naming the allowed."""
    recipe = config.get("recipe", "pretrain")
    planners = {"r1_zero": plan_grpo, "r1": plan_r1, "distill": plan_distill}
    for name in TRAIN_RECIPES:  # one stage: `plan`'s train state and step
        planners[name] = lambda c, n, *_: [_train_stage(f"{recipe} (config.train)", c, n)]
    if recipe not in planners:
        raise ValueError(
            f"config.recipe={recipe!r} has no memory plan; allowed: "
            f"{TRAIN_RECIPES + STAGED_RECIPES}"
        )
    stages = planners[recipe](config, num_devices, prompt_len, workdir)
    for s in stages:
        s["peak"] = sum(s["held"].values()) + max(sum(p.values()) for p in s["phases"].values())
    return {"recipe": recipe, "stages": stages, "peak": max(s["peak"] for s in stages)}


def format_recipe(result: dict) -> str:
    """Each stage: what it holds throughout, each phase (held + phase = its total), its peak."""
    row = lambda name, b: f"{name:58s}{b:14,d}{b / MIB:12.3f}"
    lines = [
        f"recipe {result['recipe']}: stages run one after another (each frees its arrays "
        "unless a later stage's 'held' rows name them); phases of a stage run one at a time",
        f"{'':58s}{'bytes/device':>14s}{'MiB/device':>12s}",
    ]
    for s in result["stages"]:
        mesh = " x ".join(f"{a}={n}" for a, n in s["mesh"].items() if n > 1) or "one device"
        lines.append(f"== {s['name']}: mesh {mesh} ({s['devices']} devices)")
        if s.get("note"):
            lines.append(f"  {s['note']}")
        lines.append("  held throughout")
        lines += [row(f"    {k}", v) for k, v in s["held"].items()]
        held = sum(s["held"].values())
        for name, items in s["phases"].items():
            lines.append(f"  phase: {name}")
            lines += [row(f"    {k}", v) for k, v in items.items()]
            lines.append(row("    = held + phase", held + sum(items.values())))
        lines.append(row("  stage peak", s["peak"]))
    lines.append(row("peak over the stages (est.: activations estimated)", result["peak"]))
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
    flags.DEFINE_integer(
        "prompt_len", None, "GRPO/distillation: longest prompt in tokens (default: measured)."
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "GRPO/distillation: a run's workdir, to measure prompts with its tokenizer.",
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if f.config is None:
        raise app.UsageError("--config=experiments/<name>.py is required")
    try:
        if f.config.get("recipe", "pretrain") in TRAIN_RECIPES:
            text = format_table(plan(f.config, f.num_devices, f.cache_rows, f.cache_len))
        else:
            result = plan_recipe(f.config, f.num_devices, f.prompt_len, f.workdir)
            text = format_recipe(result)
    except ValueError as e:
        raise app.UsageError(f"{e}\n(--num_devices=N plans for N devices)") from e
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
