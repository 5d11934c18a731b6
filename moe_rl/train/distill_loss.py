"""Distillation losses as pure array functions: SFT, logit KD (Hinton et al. 2015) and GKD's
generalized Jensen-Shannon divergence (Agarwal et al. 2023, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes").

Shapes: B sequences, L positions, V vocabulary. `logits_BLV[b, i]` predicts `targets_BL[b, i]`
(already shifted). `mask_BL` is 1 on completion tokens, 0 on prompt tokens and padding.
P is the teacher, Q the student; both at temperature T where a temperature is given.
All math is float32, whatever the input dtype. Every loss is a mean over masked-in tokens.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections

from moe_rl.train import lm

MODES = ("sft", "logit_kd", "gkd")


@dataclasses.dataclass(frozen=True)
class DistillLossConfig:
    # sft: cross entropy on teacher-written completions (rejection-sampled data) |
    # logit_kd: T^2 * KL(teacher_T || student_T) on fixed data (Hinton et al. 2015) |
    # gkd: generalized JSD, meant for student-sampled completions (Agarwal et al. 2023).
    mode: str = "logit_kd"
    # Softmax temperature of both teacher and student in the KD and GKD divergences.
    temperature: float = 1.0
    # Weight of the hard-label cross entropy added to the logit_kd and gkd losses.
    ce_weight: float = 0.0
    # GKD's interpolation: 0 = forward KL(P || Q), 1 = reverse KL(Q || P), between = JSD.
    beta: float = 0.5

    def __post_init__(self):
        def fail(key, allowed):
            raise ValueError(f"config.distill.{key}={getattr(self, key)!r}; allowed: {allowed}")

        if self.mode not in MODES:
            fail("mode", MODES)
        for key, ok, allowed in (
            ("temperature", lambda x: x > 0, "a number > 0"),
            ("ce_weight", lambda x: x >= 0, "a number >= 0"),
            ("beta", lambda x: 0 <= x <= 1, "a number in [0, 1]"),
        ):
            x = getattr(self, key)
            if isinstance(x, bool) or not isinstance(x, int | float):
                fail(key, allowed)
            if not (math.isfinite(x) and ok(x)):
                fail(key, allowed)

    @classmethod
    def from_config(cls, d: ml_collections.ConfigDict) -> DistillLossConfig:
        """From `config.distill`; keys it lacks keep their defaults, other keys are ignored."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def _check(student_logits_BLV, teacher_logits_BLV, mask_BL, targets_BL=None):
    chex.assert_rank(student_logits_BLV, 3)
    if teacher_logits_BLV is not None:
        chex.assert_equal_shape([student_logits_BLV, teacher_logits_BLV])
    chex.assert_shape(mask_BL, student_logits_BLV.shape[:2])
    if targets_BL is not None:
        chex.assert_shape(targets_BL, student_logits_BLV.shape[:2])
        chex.assert_type(targets_BL, int)


def _valid_logits(logits_BLV, mask_BL):
    """float32 logits with masked-out positions set to 0: padding garbage, however large, then
    reaches neither the value nor (through the where) the gradient, and cannot make NaNs."""
    return jnp.where(mask_BL[..., None] > 0, logits_BLV.astype(jnp.float32), 0.0)


def _log_probs(logits_BLV, mask_BL, temperature):
    return jax.nn.log_softmax(_valid_logits(logits_BLV, mask_BL) / temperature, axis=-1)


def _masked_mean(x_BL, mask_BL):
    mask = mask_BL.astype(jnp.float32)
    return jnp.sum(jnp.where(mask > 0, x_BL, 0.0) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _kl(logp_BLV, logq_BLV):
    """Per-token KL(p || q) = sum_v p (log p - log q), [B, L]; terms with p = 0 count 0."""
    p = jnp.exp(logp_BLV)
    return jnp.sum(jnp.where(p > 0, p * (logp_BLV - logq_BLV), 0.0), axis=-1)


def sft_loss(logits_BLV, targets_BL, mask_BL):
    """Completion-only cross entropy, mean over masked-in tokens: (loss, metrics)."""
    _check(logits_BLV, None, mask_BL, targets_BL)
    valid = mask_BL > 0
    targets_BL = jnp.where(valid, targets_BL, 0)  # padding may hold any id, even out of range
    nll, n = lm.masked_cross_entropy(_valid_logits(logits_BLV, mask_BL), targets_BL, mask_BL)
    loss = nll / jnp.maximum(n, 1.0)
    return loss, {"ce": loss, "tokens": n}


def forward_kl(student_logits_BLV, teacher_logits_BLV, mask_BL, temperature=1.0):
    """Mean over masked-in tokens of KL(P_T || Q_T), the mode-covering direction of KD."""
    _check(student_logits_BLV, teacher_logits_BLV, mask_BL)
    logq = _log_probs(student_logits_BLV, mask_BL, temperature)
    logp = jax.lax.stop_gradient(_log_probs(teacher_logits_BLV, mask_BL, temperature))
    return _masked_mean(_kl(logp, logq), mask_BL)


def reverse_kl(student_logits_BLV, teacher_logits_BLV, mask_BL, temperature=1.0):
    """Mean over masked-in tokens of KL(Q_T || P_T), the mode-seeking direction."""
    _check(student_logits_BLV, teacher_logits_BLV, mask_BL)
    logq = _log_probs(student_logits_BLV, mask_BL, temperature)
    logp = jax.lax.stop_gradient(_log_probs(teacher_logits_BLV, mask_BL, temperature))
    return _masked_mean(_kl(logq, logp), mask_BL)


def logit_kd_loss(
    student_logits_BLV, teacher_logits_BLV, targets_BL, mask_BL, temperature=1.0, ce_weight=0.0
):
    """T^2 * KL(P_T || Q_T) + ce_weight * CE(targets), means over masked-in tokens.

    The T^2 keeps the soft-target gradient's scale independent of T (Hinton et al. 2015).
    The CE is at temperature 1. Returns (loss, metrics); metrics' 'kl' is without the T^2.
    """
    _check(student_logits_BLV, teacher_logits_BLV, mask_BL, targets_BL)
    kl = forward_kl(student_logits_BLV, teacher_logits_BLV, mask_BL, temperature)
    ce, sft_metrics = sft_loss(student_logits_BLV, targets_BL, mask_BL)
    loss = temperature**2 * kl + ce_weight * ce
    return loss, {"kl": kl, "ce": ce, "tokens": sft_metrics["tokens"]}


def generalized_jsd(student_logits_BLV, teacher_logits_BLV, mask_BL, beta, temperature=1.0):
    """GKD's generalized JSD, mean over masked-in tokens (Agarwal et al. 2023, eq. 1).

    With M = beta P + (1 - beta) Q: JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M).
    As TRL's GKDTrainer.generalized_jsd_loss does, the endpoints are special cases: beta = 0
    is exactly forward KL(P || Q) and beta = 1 exactly reverse KL(Q || P). The formula itself
    tends to 0 there (JSD_beta ~ beta KL(P || Q) as beta -> 0, ~ (1 - beta) KL(Q || P) as
    beta -> 1), so the loss scale jumps at the endpoints. `beta` is a Python number: the
    branch is chosen at trace time. log M is computed with logaddexp, never log(sum of probs).
    """
    _check(student_logits_BLV, teacher_logits_BLV, mask_BL)
    if not 0 <= beta <= 1:
        raise ValueError(f"beta={beta!r}; allowed: a number in [0, 1]")
    logq = _log_probs(student_logits_BLV, mask_BL, temperature)
    logp = jax.lax.stop_gradient(_log_probs(teacher_logits_BLV, mask_BL, temperature))
    if beta == 0:
        per_token_BL = _kl(logp, logq)
    elif beta == 1:
        per_token_BL = _kl(logq, logp)
    else:
        logm = jnp.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))
        per_token_BL = beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)
    return _masked_mean(per_token_BL, mask_BL)


def distill_loss(student_logits_BLV, teacher_logits_BLV, targets_BL, mask_BL, c):
    """The loss of `c.mode`: (loss, metrics). `teacher_logits_BLV` may be None for 'sft'.

    jit with `c` static (it is a frozen, hashable dataclass).
    """
    if c.mode == "sft":
        return sft_loss(student_logits_BLV, targets_BL, mask_BL)
    if c.mode == "logit_kd":
        return logit_kd_loss(
            student_logits_BLV,
            teacher_logits_BLV,
            targets_BL,
            mask_BL,
            temperature=c.temperature,
            ce_weight=c.ce_weight,
        )
    if c.mode == "gkd":
        _check(student_logits_BLV, teacher_logits_BLV, mask_BL, targets_BL)
        jsd = generalized_jsd(
            student_logits_BLV, teacher_logits_BLV, mask_BL, c.beta, c.temperature
        )
        ce, sft_metrics = sft_loss(student_logits_BLV, targets_BL, mask_BL)
        loss = jsd + c.ce_weight * ce
        return loss, {"jsd": jsd, "ce": ce, "tokens": sft_metrics["tokens"]}
    raise ValueError(f"config.distill.mode={c.mode!r}; allowed: {MODES}")
