"""Language-model training step: pretraining and SFT share it.

Loss = next-token cross-entropy + lambda/D * sum_k MTP_k (DeepSeek-V3 eq. 25)
       + alpha * sum_layers sequence-wise balance loss (eq. 17) + optional z-loss (PaLM).
After each optimizer update the routing bias moves by gamma * sign(mean load - load)
(auxiliary-loss-free balancing), from the expert counts of the whole global batch.

DeepSeek Sparse Attention's indexer (DeepSeek-V3.2, arXiv 2512.02556 sec. 2.1.1) trains in
one of two stages, `train.dsa_stage`: 'warmup' (dense attention; the loss is the indexer's KL
to the attention alone and the optimizer updates the indexer only, `train_state.freeze_all_but`)
or 'sparse' (top-k attention; LM loss + dsa_kl_weight * the KL on the selected keys, the
indexer's inputs detached so each loss trains its own parameters).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from moe_rl import loading, sharding
from moe_rl.checkpoint import Checkpointer
from moe_rl.data import corpus, packing, tokenizers
from moe_rl.models import moe, transformer
from moe_rl.models.attention import DSA_STAGES
from moe_rl.models.config import ModelConfig
from moe_rl.train import train_state


@dataclasses.dataclass(frozen=True)
class LossConfig:
    mtp_weight: float = 0.3  # lambda (V3 used 0.3 for the first 10T tokens, then 0.1)
    balance_alpha: float = 1e-4  # alpha of the sequence-wise balance loss
    z_loss: float = 0.0  # weight of mean(logsumexp(logits)^2) (PaLM, Chowdhery et al. 2022)
    dsa_stage: str = ""  # '', 'warmup' or 'sparse': training DSA's indexer (module docstring)
    dsa_kl_weight: float = 1.0  # weight of the indexer's KL in the 'sparse' stage

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict) -> LossConfig:
        return cls(
            mtp_weight=c.mtp_weight,
            balance_alpha=c.balance_alpha,
            z_loss=c.z_loss,
            dsa_stage=c.get("dsa_stage", ""),
            dsa_kl_weight=c.get("dsa_kl_weight", 1.0),
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


def indexer_kl_loss(aux: dict, segment_ids_BL: jax.Array) -> jax.Array:
    """DSA's indexer loss: each layer's KL(attention || indexer) (attention.indexer_kl) averaged
    over the query positions that are not padding, then over the layers (MTP's included)."""
    kl_LBL = aux["dsa_kl"]
    if "mtp_dsa_kl" in aux:
        kl_LBL = jnp.concatenate([kl_LBL, aux["mtp_dsa_kl"]])
    valid = (segment_ids_BL > 0).astype(jnp.float32)
    per_layer = jnp.sum(kl_LBL * valid, axis=(1, 2)) / jnp.maximum(jnp.sum(valid), 1.0)
    return jnp.mean(per_layer)


def lm_loss(params, model_state, batch, cfg: ModelConfig, lc: LossConfig):
    """Scalar loss and (metrics, expert-count tree) for one microbatch.

    batch: tokens, positions, segment_ids [B, L] and optionally loss_mask [B, L] (SFT).
    With `lc.dsa_stage` 'warmup' the loss is the indexer's KL alone (the CE is reported, the
    expert counts not returned: nothing but the indexer trains); 'sparse' adds
    dsa_kl_weight * KL to the loss below.
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    loss_mask = batch.get("loss_mask")
    stage = lc.dsa_stage
    logits, _, aux = transformer.forward(
        cfg,
        params,
        model_state,
        tokens,
        batch["positions"],
        seg,
        dsa=stage,  # with MTP: its layers' indexers train too
    )
    nll, n = masked_cross_entropy(logits[:, :-1], tokens[:, 1:], target_mask(seg, loss_mask, 1))
    ce = nll / jnp.maximum(n, 1.0)
    loss = ce
    metrics = {"ce": ce, "tokens": n}
    if stage:
        kl = indexer_kl_loss(aux, seg)
        metrics["dsa_kl"] = kl
        if stage == "warmup":
            metrics["loss"] = kl
            return kl, (metrics, None)
        loss = loss + lc.dsa_kl_weight * kl
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
    cfg: ModelConfig,
    lc: LossConfig,
    tx: optax.GradientTransformation,
    bias_rate: float,
    loss_fn: Callable = lm_loss,
) -> Callable:
    """(state, batch) -> (state, metrics). batch leaves are [accum, micro_batch, L]: the
    microbatches are scanned, gradients and expert counts summed, then one update is applied.
    `loss_fn(params, model_state, microbatch, cfg, lc) -> (loss, (metrics, counts or None))`,
    metrics holding 'tokens' (e.g. a distillation loss instead of `lm_loss`)."""

    if lc is not None and lc.dsa_stage == "warmup":  # the indexer's warm-up: biases stay
        bias_rate = 0.0

    def step(state: train_state.TrainState, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def micro(carry, mb):
            grads, counts = carry
            (_, (metrics, c)), g = grad_fn(state.params, state.model_state, mb, cfg, lc)
            grads = jax.tree.map(jnp.add, grads, g)
            counts = counts if c is None else jax.tree.map(jnp.add, counts, c)
            return (grads, counts), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_counts = None  # shaped like counts_like_bias: the moe_bias part of the state
        if cfg.is_moe:
            bias = state.model_state[moe.BIAS_COLLECTION]
            zero_counts = {moe.BIAS_COLLECTION: jax.tree.map(jnp.zeros_like, bias)}
        (grads, counts), metrics = jax.lax.scan(micro, (zeros, zero_counts), batch)
        accum = jax.tree.leaves(batch)[0].shape[0]
        grads = jax.tree.map(lambda g: g / accum, grads)
        tokens = metrics.pop("tokens").sum()
        metrics = jax.tree.map(lambda m: m.mean(0), metrics)  # over microbatches
        metrics["tokens"] = tokens
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = train_state.apply_gradients(state, grads, tx, counts, bias_rate)
        if cfg.is_moe:  # [layers, E], after the update
            metrics["routing_bias"] = routing_bias(new_state.model_state)
        return new_state.replace(step=state.step + 1), metrics

    return step


def routing_bias(model_state: dict) -> jax.Array:
    """The balancing bias of the decoder's MoE layers, [layers, E] (for the metrics)."""
    layers = model_state[moe.BIAS_COLLECTION]["moe_layers"]
    if "scan" in layers:
        return layers["scan"]["layer"]["mlp"]["bias"]
    return jnp.stack([layers[k]["mlp"]["bias"] for k in sorted(layers, key=int)])


def make_eval_step(cfg: ModelConfig, lc: LossConfig) -> Callable:
    """(state, batch [B, L]) -> summed nll and token count, for validation loss/perplexity."""

    def step(state: train_state.TrainState, batch):
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


# ----------------------------------------------------------------------------------------------
# Recipes 'pretrain' and 'sft'.


def validate_train_config(
    config: ml_collections.ConfigDict, cfg: ModelConfig, prefix: str = ""
) -> None:
    """Checks the training fields before anything compiles; errors name the key, under
    `prefix` for a block nested in another recipe's config (R1-Zero's 'pretrain.')."""
    t = config.train

    def require(ok, msg):
        if not ok:
            raise ValueError(f"Invalid config: {prefix}{msg}")

    for key in (
        "num_steps",
        "batch_size",
        "seq_len",
        "grad_accum",
        "checkpoint_every",
        "log_every",
    ):
        require(t[key] > 0, f"train.{key}={t[key]} must be > 0")
    require(
        t.batch_size % t.grad_accum == 0,
        f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}",
    )
    require(
        t.seq_len <= cfg.max_position_embeddings,
        f"train.seq_len={t.seq_len} exceeds model.max_position_embeddings="
        f"{cfg.max_position_embeddings}",
    )
    require(t.eval_every >= 0 and t.eval_batches >= 0, "train.eval_every/eval_batches must be >= 0")
    require(t.bias_update_rate >= 0, f"train.bias_update_rate={t.bias_update_rate} must be >= 0")
    stage = t.get("dsa_stage", "")
    require(
        stage in ("", *DSA_STAGES),
        f"train.dsa_stage={stage!r} must be one of '' (off), "
        + ", ".join(repr(s) for s in DSA_STAGES),
    )
    require(
        not stage or cfg.index_topk > 0,
        f"train.dsa_stage={stage!r} trains DeepSeek Sparse Attention's indexer: it needs "
        f"model.index_topk > 0 (it is {cfg.index_topk})",
    )
    kl_weight = t.get("dsa_kl_weight", 1.0)
    require(kl_weight >= 0, f"train.dsa_kl_weight={kl_weight} must be >= 0")
    validate_optim(config.optim, f"{prefix}optim")


def validate_optim(o: ml_collections.ConfigDict, key: str = "optim") -> None:
    """An optimizer block (configs.optim); errors name `key`."""
    name = o.get("name", "adamw")
    if name not in train_state.OPTIMIZERS:
        raise ValueError(
            f"Invalid config: {key}.name={name!r} must be one of {train_state.OPTIMIZERS}"
        )
    if name == "muon":
        for field, ok, allowed in (
            ("muon_momentum", 0 <= o.muon_momentum < 1, "in [0, 1)"),
            ("muon_rms", o.muon_rms > 0, "> 0"),
        ):
            if not ok:
                raise ValueError(f"Invalid config: {key}.{field}={o[field]} must be {allowed}")
    checks = (
        ("learning_rate", o.learning_rate > 0, "> 0"),
        ("end_lr_ratio", 0 <= o.end_lr_ratio <= 1, "in [0, 1]"),
        ("warmup_steps", o.warmup_steps >= 0, ">= 0"),
        ("grad_clip", o.grad_clip > 0, "> 0"),
        ("weight_decay", o.weight_decay >= 0, ">= 0"),
        ("b1", 0 <= o.b1 < 1, "in [0, 1)"),
        ("b2", 0 <= o.b2 < 1, "in [0, 1)"),
    )
    for name, ok, allowed in checks:
        if not ok:
            raise ValueError(f"Invalid config: {key}.{name}={o[name]} must be {allowed}")


def load_sources(config: ml_collections.ConfigDict):
    """(train, validation) sequences: documents (pretrain) or (prompt, completion) pairs (sft)."""
    d = config.data
    if config.recipe == "sft":
        return tuple(read_pairs(path) for path in (d.sft_train, d.sft_validation))
    kwargs = dict(
        data_dir=d.data_dir or None, text_key=d.text_key or None, download=d.get("download", False)
    )
    if d.name == corpus.ARITHMETIC:
        kwargs["config"] = corpus.arithmetic_config(
            d.num_documents, d.num_validation, d.corpus_seed, d.get("mix", "default")
        )
    return tuple(
        corpus.load_text_dataset(d.name, split, **kwargs) for split in ("train", d.validation_split)
    )


def read_pairs(path: str) -> list[tuple[str, str]]:
    """A JSONL file of {"prompt": ..., "completion": ...} lines."""
    if not path or not os.path.exists(path):
        raise ValueError(
            f"SFT data file {path!r} does not exist (config.data.sft_train/sft_validation)"
        )
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["prompt"], r["completion"]) for r in rows]


def _microbatches(batch: dict, accum: int) -> dict:
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in batch.items()}


class Reshaped:
    """Iterator over [accum, B/accum, L] batches that keeps the packer's resumable state;
    `put` places each batch on the devices (global arrays on a mesh)."""

    def __init__(self, batches: packing.PackedBatches, accum: int, put: Callable = lambda b: b):
        self.batches, self.accum, self.put = batches, accum, put

    def __iter__(self):
        return self

    def __next__(self):
        return self.put(_microbatches(next(self.batches), self.accum))


def restore_or_init(config, cfg: ModelConfig, tx, workdir: str, mesh=None):
    """(state, checkpointer, data-iterator state or None): resume from the workdir's newest
    checkpoint, else start from `config.init_checkpoint`'s params, else from scratch. With a
    mesh, the state is created (or restored) directly in its shardings."""
    make = lambda: train_state.init(cfg, tx, config.seed)
    abstract = jax.eval_shape(make)
    shardings = None if mesh is None else sharding.state_shardings(abstract, cfg, mesh)
    init = jax.jit(make, out_shardings=shardings)
    target = abstract if shardings is None else sharding.with_shardings(abstract, shardings)
    checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    restored = checkpointer.restore_latest(target)
    if restored is not None:
        state, extra, step = restored
        logging.info("Resuming %s from step %d", workdir, step)
        return state, checkpointer, extra.get("data")
    state = init()
    if config.get("init_checkpoint"):
        # Only the model is read: any train state (pretraining, SFT, GRPO) is a valid start.
        model_sh = None if shardings is None else (shardings.params, shardings.model_state)
        params, model_state, _ = loading.load_model(
            config.init_checkpoint, cfg, model_sh, key="config.init_checkpoint"
        )
        state = state.replace(params=params, model_state=model_state)
    return state, checkpointer, None


BPE_DOCUMENTS = 20_000  # training documents a 'bpe:<vocab>' tokenizer is learned from
# 'bpe:<vocab>[:<suffix>]': the suffix -> tokenizers.train_bpe's `numbers`
BPE_NUMBERS = {"": "split", "numbers": "whole", "spaced": "spaced"}


def run_tokenizer(name: str, train_src, workdir: str):
    """config.data.tokenizer: 'byte', a Hugging Face folder/file, or 'bpe:<vocab size>' = a BPE
    learned from the first training documents (digits split), 'bpe:<vocab size>:numbers' the
    same with whole numbers mergeable into one token, 'bpe:<vocab size>:spaced' with a number's
    leading space in its token too (GPT-2's pre-tokenization; `tokenizers.train_bpe`); saved in
    <workdir>/tokenizer, reused."""
    if not name.startswith("bpe:"):
        return tokenizers.get_tokenizer(name)
    folder = os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return tokenizers.get_tokenizer(folder)
    size, _, digits = name.removeprefix("bpe:").partition(":")
    if not size.isdigit() or int(size) < 260 or digits not in BPE_NUMBERS:
        raise ValueError(
            f"config.data.tokenizer={name!r}: expected 'bpe:<vocab size >= 260>' or "
            "'bpe:<vocab size >= 260>:numbers' or 'bpe:<vocab size >= 260>:spaced'"
        )
    if isinstance(train_src[0], tuple):
        raise ValueError("config.data.tokenizer='bpe:...' is for pretraining corpora")
    texts = (train_src[i] for i in range(min(len(train_src), BPE_DOCUMENTS)))
    return tokenizers.train_bpe(texts, int(size), folder, numbers=BPE_NUMBERS[digits])
