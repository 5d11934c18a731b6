"""Distillation from a frozen teacher's logits: modes 'logit_kd' and 'gkd' of the distill recipe.

`kd_loss_fn` is a `lm.make_train_step` loss: the student's logits against the teacher's on the
same batch, completion tokens only (logit KD, Hinton et al. 2015; the divergence is
`distill_loss`). `run_gkd` is on-policy distillation (Agarwal et al. 2023, "On-Policy
Distillation of Language Models: Learning from Self-Generated Mistakes", algorithm 1): with
probability lmbda a step's completions are sampled from the current student, else they are
the teacher's, and both go through the same KD step in `loop.train_loop`.
"""

from __future__ import annotations

import jax
import numpy as np

from moe_rl import sampling
from moe_rl.data import packing
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.train import distill_loss, lm, loop, train_state


def kd_loss_fn(teacher_cfg, teacher_params, teacher_state, c: distill_loss.DistillLossConfig):
    """A `lm.make_train_step` loss: the student's logits against the frozen teacher's on the
    same packed SFT batch (logit KD, Hinton et al. 2015), completion tokens only. The teacher's
    weights are constants of the compiled step, its logits under stop_gradient."""

    def loss_fn(params, model_state, mb, cfg, lc):
        del lc
        tokens, seg, pos = mb["tokens"], mb["segment_ids"], mb["positions"]
        logits, _, _ = transformer.forward(cfg, params, model_state, tokens, pos, seg, mtp=False)
        teacher_logits, _, _ = transformer.forward(
            teacher_cfg, teacher_params, teacher_state, tokens, pos, seg, mtp=False
        )
        mask = lm.target_mask(seg, mb.get("loss_mask"), 1)
        loss, metrics = distill_loss.distill_loss(
            logits[:, :-1],
            jax.lax.stop_gradient(teacher_logits[:, :-1]),
            tokens[:, 1:],
            mask,
            c,
        )
        return loss, ({**metrics, "loss": loss}, None)

    return loss_fn


def pair_rows(prompt_ids, completion_ids, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One (prompt, completion) per row, right-padded to seq_len (cut there if longer), from
    token ids: the student's samples are trained on exactly the tokens it sampled (decoding and
    re-encoding could tokenize them differently). loss_mask is 1 on the completion tokens."""
    B = len(prompt_ids)
    tokens = np.full((B, seq_len), pad_id, np.int32)
    segments = np.zeros((B, seq_len), np.int32)
    loss_mask = np.zeros((B, seq_len), np.int32)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        ids = np.concatenate([np.asarray(p, np.int32), np.asarray(c, np.int32)])[:seq_len]
        tokens[b, : len(ids)] = ids
        segments[b, : len(ids)] = 1
        loss_mask[b, len(p) : len(ids)] = 1
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (B, seq_len)).copy()
    return dict(tokens=tokens, segment_ids=segments, positions=positions, loss_mask=loss_mask)


class GKDBatches:
    """Step s's batch: `batch_size` of the teacher's kept (prompt, completion) rows, drawn
    without replacement by numpy's Generator seeded with (seed, s), and whether the student
    writes this batch's completions itself (probability lmbda, the same draw). Deterministic
    by step, so its state is the step."""

    def __init__(self, rows: list[dict], batch_size: int, lmbda: float, seed: int):
        if not rows:
            raise ValueError("GKD needs at least one teacher row")
        self.rows, self.batch_size, self.lmbda, self.seed = rows, batch_size, lmbda, seed
        self.step = 0

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_state(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])

    def __iter__(self) -> GKDBatches:
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.step])
        n = len(self.rows)
        picks = rng.choice(n, self.batch_size, replace=self.batch_size > n)
        on_policy = bool(rng.random() < self.lmbda)
        self.step += 1
        return {"rows": [self.rows[i] for i in picks], "on_policy": on_policy, "index": self.step}


def make_gkd_step(train_step, cfg: ModelConfig, tokenizer, sp, seq_len: int, seed: int):
    """(state, GKDBatches item) -> (state, metrics). On-policy batches are sampled from the
    current student (KV-cached sampler, `sp`), the others use the teacher's completions; both
    go through the same jitted distillation step (`train_step`, loss = generalized JSD with the
    teacher's logits under stop_gradient)."""
    bos = tokenizer.bos_id is not None

    def step(state, batch):
        prompt_ids = [tokenizer.encode(r["prompt"], add_bos=bos) for r in batch["rows"]]
        if batch["on_policy"]:
            out = sampling.generate(
                cfg,
                state.params,
                state.model_state,
                prompt_ids,
                jax.random.fold_in(jax.random.key(seed), batch["index"]),
                sp,
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
            )
            tokens, lengths = jax.device_get((out.tokens, out.lengths))
            completions = [row[:n] for row, n in zip(tokens, lengths, strict=True)]
        else:
            completions = [tokenizer.encode(r["completion"], add_eos=True) for r in batch["rows"]]
        arrays = pair_rows(prompt_ids, completions, seq_len, tokenizer.pad_id)
        state, metrics = train_step(state, {k: v[None] for k, v in arrays.items()})
        metrics = dict(metrics)
        metrics["on_policy"] = float(batch["on_policy"])
        metrics["completion_length"] = float(np.mean([len(c) for c in completions]))
        return state, metrics

    return step


def run_gkd(
    config, workdir: str, student_cfg, teacher, tokenizer, train_rows, val_rows, c, lmbda, sp
) -> dict:
    """GKD of the student from config.init_checkpoint (its pretrained base) into workdir,
    resumable; `config` is the student's SFT block (train, optim), `teacher` its
    (cfg, params, model_state)."""
    t = config.train
    lm.validate_train_config(config, student_cfg)
    tx = train_state.make_optimizer(config.optim, t.num_steps)
    state, checkpointer, data_state = lm.restore_or_init(config, student_cfg, tx, workdir)
    batches = GKDBatches(train_rows, t.batch_size, lmbda, config.seed)
    if data_state is not None:
        batches.set_state(data_state)
    lc = lm.LossConfig.from_config(t)
    loss_fn = kd_loss_fn(*teacher, c)
    train_step = jax.jit(
        lm.make_train_step(student_cfg, lc, tx, t.bias_update_rate, loss_fn), donate_argnums=0
    )
    step = make_gkd_step(train_step, student_cfg, tokenizer, sp, t.seq_len, config.seed)
    pairs = [(r["prompt"], r["completion"]) for r in val_rows[: t.batch_size * t.eval_batches]]
    val = [
        packing.sft_batch(pairs[b : b + t.batch_size], tokenizer, t.seq_len, t.batch_size, False)
        for b in range(0, len(pairs), t.batch_size)
    ]
    eval_step = jax.jit(lm.make_eval_step(student_cfg, lc))

    def evaluate_fn(state):
        """Cross-entropy on the teacher's held-out answers: the val_loss of the other modes."""
        sums = np.asarray([jax.device_get(eval_step(state, b)) for b in val], np.float64)
        loss = sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0)
        return {"val_loss": float(loss), "val_ppl": float(np.exp(min(loss, 50.0)))}

    state, rows = loop.train_loop(
        state=state,
        step_fn=step,
        batches=batches,
        num_steps=t.num_steps,
        workdir=workdir,
        checkpointer=checkpointer,
        checkpoint_every=t.checkpoint_every,
        data_state=batches.get_state,
        eval_fn=evaluate_fn if val else None,
        eval_every=t.eval_every,
        log_every=t.log_every,
        progress_keys=("loss", "jsd", "on_policy", "val_loss"),
    )
    checkpointer.close()
    return {"rows": rows}
