"""The train state every recipe steps: its pytree, its creation, the optimizer, one update.

`TrainState.step` counts the recipe's steps (one per `loop.train_loop` step): one optimizer
update in pretraining, SFT and GKD; one rollout and its mu x minibatch updates in GRPO. The
learning-rate schedule reads the optimizer's own update count, not `step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
import optax.contrib

from moe_rl.models import moe, transformer
from moe_rl.models.config import ModelConfig


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed as one pytree."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: dict  # {"moe_bias", "moe_hash" (V4 hash layers)}: not trained by the optimizer
    rng: jax.Array


def _no_decay_mask(params):
    """Weight decay only on matrices: norms' scales and biases (ndim < 2) are exempt."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_schedule(c: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup then cosine decay to end_lr_ratio * learning_rate, over `num_steps`
    optimizer updates."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.learning_rate,
        warmup_steps=c.warmup_steps,
        decay_steps=max(num_steps, c.warmup_steps + 1),
        end_value=c.learning_rate * c.end_lr_ratio,
    )


OPTIMIZERS = ("adamw", "muon")  # optim.name


# Not linear maps, or kept on AdamW as DeepSeek-V4 keeps them: the embedding, the output head,
# and V4's compressor position biases (a [rate, width] table added to the gate logits).
NOT_MUON = frozenset({"embedding", "lm_head", "position_bias"})

# The matrix each >2-D weight is, by its name: (reduction axes, output axes); any other axis is
# a batch of separate matrices. Not listed: [in, heads, dim] (q/k/v, q_b, kv_b, the indexers'
# query projections), one matrix from `in` to heads x dim.
MATRIX_AXES = {
    "experts_gate": ((1,), (2,)),  # [E, D, F]: one matrix per routed expert
    "experts_up": ((1,), (2,)),
    "experts_down": ((1,), (2,)),  # [E, F, D]
    "o_proj": ((0, 1), (2,)),  # [heads, v, D]: all heads into D
    "o_a_proj": ((1,), (2,)),  # V4 [groups, heads/g x d, o_lora]: one matrix per group
    "o_b_proj": ((0, 1), (2,)),  # V4 [groups, o_lora, D]: all groups into D
}


def is_muon_matrix(path: tuple, p) -> bool:
    """Muon's parameters (optim.name='muon'): the weight matrices (2-D, or stacks of them,
    `muon_axes`) but the embedding, the output head and V4's position biases, as in
    DeepSeek-V4; AdamW keeps those, norms, biases and vectors."""
    names = {getattr(k, "key", None) for k in path}
    return p.ndim >= 2 and not names & NOT_MUON


def muon_axes(path: tuple, p) -> optax.contrib.MuonDimensionNumbers:
    """The (reduction, output) axes of a Muon parameter as the matrix it multiplies by
    (optax's MuonDimensionNumbers; the other axes are a batch of matrices)."""
    name = getattr(path[-1], "key", None)
    reduction, output = MATRIX_AXES.get(name, ((0,), tuple(range(1, p.ndim))))
    return optax.contrib.MuonDimensionNumbers(reduction, output)


def make_optimizer(c: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the warmup-cosine schedule; with optim.name='muon',
    optax's Muon (optax.contrib.muon: Newton-Schulz-orthogonalised Nesterov momentum, Jordan et
    al. 2024) on `is_muon_matrix` params (stacks of matrices as `muon_axes` says), its updates
    rescaled to RMS optim.muon_rms
    (Moonlight's matching, arXiv 2502.16982: AdamW's learning rate and weight decay carry
    over), and the same AdamW on the rest."""
    schedule = make_schedule(c, num_steps)
    adamw = optax.adamw(
        schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=_no_decay_mask
    )
    if c.get("name", "adamw") == "adamw":
        return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw)
    muon = optax.contrib.muon(
        schedule,
        beta=c.muon_momentum,
        weight_decay=c.weight_decay,
        consistent_rms=c.muon_rms,
        muon_weight_dimension_numbers=lambda params: jax.tree_util.tree_map_with_path(
            muon_axes, params
        ),
    )
    labels = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, p: "muon" if is_muon_matrix(path, p) else "adamw", params
    )
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        optax.multi_transform({"muon": muon, "adamw": adamw}, labels),
    )


def freeze_all_but(
    tx: optax.GradientTransformation, trainable: Callable[[tuple], bool]
) -> optax.GradientTransformation:
    """`tx` on the params whose key path `trainable(path)` accepts; the others get zero updates
    and no optimizer state (optax.multi_transform with optax.set_to_zero), so neither their
    gradients nor weight decay move them."""

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(path) else "frozen", params
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def is_indexer(path: tuple) -> bool:
    """A parameter of DeepSeek Sparse Attention's lightning indexer (attention.Indexer)."""
    return any(getattr(k, "key", None) == "indexer" for k in path)


def create(params, model_state, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Step 0 of a run from a given model (fresh, pretrained or loaded)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        rng=rng,
    )


def init(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0 of a model initialised from `seed`."""
    params_key, rng = jax.random.split(jax.random.key(seed))
    params, model_state = transformer.init(cfg, params_key)
    return create(params, model_state, tx, rng)


def apply_gradients(
    state: TrainState,
    grads,
    tx: optax.GradientTransformation,
    counts=None,
    bias_rate: float = 0.0,
) -> TrainState:
    """One optimizer update of the params and, with `counts` (expert loads shaped like the
    routing biases) and `bias_rate` > 0, the auxiliary-loss-free balancing update of the
    biases: b += gamma * sign(mean load - load) (DeepSeek-V3 sec. 2.1.2). `step` is left to
    the caller (see the module docstring)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = state.model_state
    if counts is not None and bias_rate:  # only moe_bias: the moe_hash tables stay frozen
        bias = jax.tree.map(
            lambda b, c: moe.update_bias(b, c, bias_rate),
            model_state[moe.BIAS_COLLECTION],
            counts[moe.BIAS_COLLECTION],
        )
        model_state = {**model_state, moe.BIAS_COLLECTION: bias}
    return state.replace(params=params, opt_state=opt_state, model_state=model_state)
