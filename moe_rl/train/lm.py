"""Language-model training step: pretraining and SFT share it.

Loss = next-token cross-entropy + lambda/D * sum_k MTP_k (DeepSeek-V3 eq. 25)
       + alpha * sum_layers sequence-wise balance loss (eq. 17) + optional z-loss (PaLM).
After each optimizer update the routing bias moves by gamma * sign(mean load - load)
(auxiliary-loss-free balancing), from the expert counts of the whole global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from moe_rl.models import moe, transformer
from moe_rl.models.config import ModelConfig


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed as one pytree."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: dict  # {'moe_bias': ...}: not trained by the optimizer
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class LossConfig:
    mtp_weight: float = 0.3  # lambda (V3 used 0.3 for the first 10T tokens, then 0.1)
    balance_alpha: float = 1e-4  # alpha of the sequence-wise balance loss
    z_loss: float = 0.0  # weight of mean(logsumexp(logits)^2) (PaLM, Chowdhery et al. 2022)

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict) -> LossConfig:
        return cls(mtp_weight=c.mtp_weight, balance_alpha=c.balance_alpha, z_loss=c.z_loss)


def _no_decay_mask(params):
    """Weight decay only on matrices: norms' scales and biases (ndim < 2) are exempt."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_schedule(c: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup then cosine decay to end_lr_ratio * learning_rate."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.learning_rate,
        warmup_steps=c.warmup_steps,
        decay_steps=max(num_steps, c.warmup_steps + 1),
        end_value=c.learning_rate * c.end_lr_ratio,
    )


def make_optimizer(c: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the warmup-cosine schedule."""
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        optax.adamw(
            make_schedule(c, num_steps),
            b1=c.b1,
            b2=c.b2,
            eps=c.eps,
            weight_decay=c.weight_decay,
            mask=_no_decay_mask,
        ),
    )


def masked_cross_entropy(logits_BLV, targets_BL, mask_BL):
    """(sum of -log p(target) over the mask, number of masked-in tokens), in float32."""
    logp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_BL[..., None], axis=-1)[..., 0]
    mask = mask_BL.astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def target_mask(segment_ids_BL, loss_mask_BL, offset: int):
    """Mask for predicting token i+offset from position i: same document, not padding, and the
    target is a loss token (SFT: completion tokens only)."""
    seg_in, seg_out = segment_ids_BL[:, :-offset], segment_ids_BL[:, offset:]
    mask = (seg_in == seg_out) & (seg_out > 0)
    if loss_mask_BL is not None:
        mask &= loss_mask_BL[:, offset:] > 0
    return mask


def lm_loss(params, model_state, batch, cfg: ModelConfig, lc: LossConfig):
    """Scalar loss and (metrics, expert-count tree) for one microbatch.

    batch: tokens, positions, segment_ids [B, L] and optionally loss_mask [B, L] (SFT).
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    loss_mask = batch.get("loss_mask")
    logits, _, aux = transformer.forward(cfg, params, model_state, tokens, batch["positions"], seg)
    nll, n = masked_cross_entropy(logits[:, :-1], tokens[:, 1:], target_mask(seg, loss_mask, 1))
    ce = nll / jnp.maximum(n, 1.0)
    loss = ce
    metrics = {"ce": ce, "tokens": n}
    depth = cfg.num_nextn_predict_layers
    if depth:
        mtp_losses = []
        for k in range(1, depth + 1):
            mask = target_mask(seg, loss_mask, k + 1)
            nll_k, n_k = masked_cross_entropy(
                aux["mtp_logits"][k - 1][:, : -(k + 1)], tokens[:, k + 1 :], mask
            )
            mtp_losses.append(nll_k / jnp.maximum(n_k, 1.0))
        mtp = sum(mtp_losses) / depth
        loss = loss + lc.mtp_weight * mtp
        metrics["mtp_ce"] = mtp
    counts = None
    if cfg.is_moe:
        balance = jnp.sum(aux["balance_loss"])
        loss = loss + lc.balance_alpha * balance
        metrics["balance_loss"] = balance
        counts = transformer.counts_like_bias(cfg, model_state, aux)
        load = aux["expert_counts"]
        # max load / mean load per layer, averaged: 1.0 is perfect balance.
        metrics["load_imbalance"] = jnp.mean(load.max(-1) / jnp.maximum(load.mean(-1), 1e-9))
        metrics["expert_load"] = load / jnp.maximum(load.sum(-1, keepdims=True), 1.0)  # [layers, E]
    if lc.z_loss:
        z = jax.nn.logsumexp(logits, axis=-1) ** 2
        loss = loss + lc.z_loss * jnp.mean(z)
    metrics["loss"] = loss
    return loss, (metrics, counts)


def make_train_step(
    cfg: ModelConfig, lc: LossConfig, tx: optax.GradientTransformation, bias_rate: float
) -> Callable:
    """(state, batch) -> (state, metrics). batch leaves are [accum, micro_batch, L]: the
    microbatches are scanned, gradients and expert counts summed, then one update is applied."""

    def step(state: TrainState, batch):
        grad_fn = jax.value_and_grad(lm_loss, has_aux=True)

        def micro(carry, mb):
            grads, counts = carry
            (_, (metrics, c)), g = grad_fn(state.params, state.model_state, mb, cfg, lc)
            grads = jax.tree.map(jnp.add, grads, g)
            counts = counts if c is None else jax.tree.map(jnp.add, counts, c)
            return (grads, counts), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_counts = jax.tree.map(jnp.zeros_like, state.model_state) if cfg.is_moe else None
        (grads, counts), metrics = jax.lax.scan(micro, (zeros, zero_counts), batch)
        accum = jax.tree.leaves(batch)[0].shape[0]
        grads = jax.tree.map(lambda g: g / accum, grads)
        tokens = metrics.pop("tokens").sum()
        metrics = jax.tree.map(lambda m: m.mean(0), metrics)  # over microbatches
        metrics["tokens"] = tokens
        metrics["grad_norm"] = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = state.model_state
        if cfg.is_moe and bias_rate:
            model_state = jax.tree.map(
                lambda b, c: moe.update_bias(b, c, bias_rate), state.model_state, counts
            )
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
        )
        return new_state, metrics

    return step


def make_eval_step(cfg: ModelConfig, lc: LossConfig) -> Callable:
    """(state, batch [B, L]) -> summed nll and token count, for validation loss/perplexity."""

    def step(state: TrainState, batch):
        logits, _, _ = transformer.forward(
            cfg,
            state.params,
            state.model_state,
            batch["tokens"],
            batch["positions"],
            batch["segment_ids"],
            mtp=False,
        )
        mask = target_mask(batch["segment_ids"], batch.get("loss_mask"), 1)
        return masked_cross_entropy(logits[:, :-1], batch["tokens"][:, 1:], mask)

    return step


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    params_key, rng = jax.random.split(jax.random.key(seed))
    params, model_state = transformer.init(cfg, params_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        rng=rng,
    )
