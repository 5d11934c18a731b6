"""Recipes 'pretrain' and 'sft': a language model trained on a corpus (pretraining) or on
(prompt, completion) pairs (SFT, the loss on the completions only), with the train step of
`moe_rl.train.lm` inside `loop.train_loop`: checkpointed, resumed, evaluated on the validation
split, summarised in <workdir>/summary.json and plotted. A finished run is not trained again.

    python -m moe_rl.main --config=experiments/pretrain_moe.py
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from moe_rl import hf, perf, plots, sharding
from moe_rl.data import packing
from moe_rl.models import counting
from moe_rl.models.config import ModelConfig
from moe_rl.train import loop, train_state
from moe_rl.train.lm import (
    LossConfig,
    Reshaped,
    lm_loss,
    load_sources,
    make_eval_step,
    make_train_step,
    restore_or_init,
    run_tokenizer,
    validate_train_config,
)


def run(config: ml_collections.ConfigDict, workdir: str, loss_fn: Callable | None = None) -> dict:
    """Recipes 'pretrain' and 'sft': train, evaluate, checkpoint, plot; returns the summary.
    `loss_fn` replaces the training loss (see make_train_step); validation stays the CE.
    A Hugging Face `init_checkpoint` brings its model config (and must bring its tokenizer)."""
    config = hf.with_hf_model(config)
    if hf.is_hf_folder(config.get("init_checkpoint")) and (
        config.data.tokenizer == "byte" or config.data.tokenizer.startswith("bpe:")
    ):
        raise ValueError(
            f"config.data.tokenizer={config.data.tokenizer!r} with the Hugging Face model "
            f"config.init_checkpoint={config.init_checkpoint!r}: use its tokenizer, "
            f"--config.data.tokenizer={config.init_checkpoint}"
        )
    mesh = sharding.mesh_from_config(config)
    expert_parallel = 1 if mesh is None else dict(mesh.shape)["expert"]
    cfg = ModelConfig.from_config(config.model, expert_parallel=expert_parallel)
    validate_train_config(config, cfg)
    if mesh is None:
        return _run(config, workdir, loss_fn, cfg, None)
    t = config.train
    sharding.check_batch(t.batch_size // t.grad_accum, mesh, "config.train.batch_size/grad_accum")
    with jax.set_mesh(mesh):
        return _run(config, workdir, loss_fn, cfg, mesh)


def _run(config, workdir: str, loss_fn, cfg: ModelConfig, mesh) -> dict:
    t = config.train
    train_src, val_src = load_sources(config)
    tokenizer = run_tokenizer(config.data.tokenizer, train_src, workdir)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"config.data.tokenizer has {tokenizer.vocab_size} tokens > "
            f"model.vocab_size={cfg.vocab_size}"
        )
    batches = packing.PackedBatches(train_src, tokenizer, t.batch_size, t.seq_len, seed=config.seed)
    val_batches = packing.PackedBatches(val_src, tokenizer, t.batch_size, t.seq_len, shuffle=False)
    val_batches = [next(val_batches) for _ in range(t.eval_batches)]

    tx = train_state.make_optimizer(config.optim, t.num_steps)
    if t.get("dsa_stage", "") == "warmup":  # DSA's indexer warm-up: the rest stays frozen
        tx = train_state.freeze_all_but(tx, train_state.is_indexer)
    state, checkpointer, data_state = restore_or_init(config, cfg, tx, workdir, mesh)
    # A finished run is not trained or summarised again. (A final checkpoint that does not
    # read was set aside by the restore: the run then resumes from the one before.)
    done = loop.finished_summary(workdir, t.num_steps) if int(state.step) >= t.num_steps else None
    if done is not None:
        checkpointer.close()
        print(f"{workdir}: already finished at step {done['steps']}; its results are unchanged")
        return {**done, "plots": sorted(glob.glob(os.path.join(workdir, "*.png")))}
    if data_state is not None:
        batches.set_state(data_state)
    lc = LossConfig.from_config(t)
    step_fn = make_train_step(cfg, lc, tx, t.bias_update_rate, loss_fn or lm_loss)
    eval_fn = make_eval_step(cfg, lc)
    put = put_val = lambda b: b
    if mesh is None:
        train_step, eval_step = jax.jit(step_fn, donate_argnums=0), jax.jit(eval_fn)
    else:  # explicit shardings in and out: the state stays split, batches split by rows
        state_sh = jax.tree.map(lambda a: a.sharding, state)
        batch_sh, val_sh = sharding.batch_sharding(mesh, 1), sharding.batch_sharding(mesh)
        # Metrics replicated on every device: each process can jax.device_get them (an array
        # split over devices of several processes cannot be fetched by one of them).
        replicated = sharding.replicated(mesh)
        train_step = jax.jit(
            step_fn,
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, replicated),
            donate_argnums=0,
        )
        eval_step = jax.jit(eval_fn, in_shardings=(state_sh, val_sh), out_shardings=replicated)
        put = lambda b: sharding.put_batch(b, batch_sh)
        put_val = lambda b: sharding.put_batch(b, val_sh)
        val_batches = [put_val(b) for b in val_batches]

    def evaluate(state):
        nll, n = 0.0, 0.0
        for b in val_batches:
            s, c = jax.device_get(eval_step(state, b))
            nll, n = nll + float(s), n + float(c)
        loss = nll / max(n, 1.0)
        return {"val_loss": loss, "val_ppl": float(np.exp(min(loss, 50.0)))}

    flops = counting.flops_per_token(cfg, t.seq_len)
    peak = perf.measure_matmul_peak(dtype=cfg.compute_dtype)  # MFU of the matmuls' dtype

    schedule = train_state.make_schedule(config.optim, t.num_steps)

    def throughput(step, metrics):
        tokens_per_s = float(metrics["tokens"]) / max(metrics["step_seconds"], 1e-9)
        return {
            "tokens_per_s": tokens_per_s,
            "mfu": flops * tokens_per_s / peak,
            "learning_rate": float(schedule(step - 1)),  # the rate of this step's update
        }

    start_step = int(state.step)
    state, rows = loop.train_loop(
        state=state,
        step_fn=train_step,
        batches=Reshaped(batches, t.grad_accum, put),
        num_steps=t.num_steps,
        workdir=workdir,
        checkpointer=checkpointer,
        checkpoint_every=t.checkpoint_every,
        data_state=batches.get_state,
        eval_fn=evaluate if t.eval_batches else None,
        eval_every=t.eval_every,
        log_every=t.log_every,
        progress_keys=("loss", "ce", "val_loss", "tokens_per_s"),
        extra_metrics=throughput,
    )
    checkpointer.close()
    summary = summarize_run(cfg, rows, flops, peak, start_step)
    primary = jax.process_index() == 0  # multi-process: one writer for the shared workdir
    if primary:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    summary["plots"] = plots.plot_training(workdir) if primary else []
    return summary


def summarize_run(
    cfg: ModelConfig, rows: list[dict], flops: float, peak: float, start: int
) -> dict:
    """Final and median metrics of this invocation (steps after warm-up compile)."""
    train_rows = [r for r in rows if "loss" in r]
    timed = [r for r in train_rows if r["step"] > start + 2] or train_rows
    evals = [r for r in rows if "val_loss" in r]
    counts = counting.param_counts(cfg)
    tokens_per_s = float(np.median([r["tokens_per_s"] for r in timed])) if timed else 0.0
    return {
        "params": counts["total"],
        "activated_params": counts["activated"],
        "flops_per_token": flops,
        "matmul_peak_flops": peak,
        "tokens_per_s": tokens_per_s,
        "mfu": flops * tokens_per_s / peak,
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "steps": train_rows[-1]["step"] if train_rows else start,
    }
