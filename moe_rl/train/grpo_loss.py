"""GRPO's advantages and loss, as pure array functions (every variant a config value).

Shapes: B sequences (= questions x G generations, question-major), N completion tokens.
`mask_BN` is 1 on a completion's tokens up to and including its first EOS, 0 on padding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
RATIOS = ("token", "sequence")
KL_MODES = ("k3_loss", "k1_reward")
AGGREGATIONS = ("seq_mean", "token_mean", "constant")
LOSSES = ("grpo", "cispo")
IS_CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # (r - mean) / (std + eps), DeepSeekMath sec. 4.1.2 (outcome supervision) | r - mean,
    # Dr. GRPO (Liu et al. 2025) |
    # r - mean of the other G-1, RLOO (Ahmadian et al. 2024).
    advantage: str = "grpo"
    adv_eps: float = 1e-4
    # Clipping range [1 - eps_low, 1 + eps_high]; eps_high > eps_low is DAPO's clip-higher.
    eps_low: float = 0.2
    eps_high: float = 0.2
    # Importance ratio per token (PPO/GRPO) or one per sequence, exp(mean log-ratio) (GSPO,
    # whose clip range is ~1e-3 wide: grpo.validate_grpo_config refuses a token-level one).
    ratio: str = "token"
    # KL to the reference: k3 estimator in the loss (DeepSeekMath eq. 4) or k1 in the reward
    # (`kl_penalized_rewards`).
    beta: float = 0.04
    kl: str = "k3_loss"
    # Loss aggregation: mean per sequence then over the batch (GRPO) | mean over all tokens
    # (DAPO) | sum over tokens / (sequences x max_new_tokens) (Dr. GRPO).
    aggregation: str = "seq_mean"
    # The policy-gradient term: PPO/GRPO's clipped surrogate, or CISPO (MiniMax-M1, arXiv
    # 2506.13585, eq. 4): -sg(clip(ratio, 1 - eps_low, 1 + eps_high)) * A * log pi_theta, which
    # clips the importance weight instead of dropping the clipped tokens' gradient.
    loss: str = "grpo"
    # DeepSeek-V3.2 (arXiv 2512.02556, sec. 3.1 "Unbiased KL Estimate"): the k3 term weighted
    # by pi_theta / pi_old (with its gradient), since the tokens were sampled from pi_old; its
    # gradient is then KL(pi_theta || ref)'s exactly. Off: DeepSeekMath's plain k3.
    kl_unbiased: bool = False
    # DeepSeek-V3.2 (sec. 3.1 "Off-Policy Sequence Masking"): a sequence with a negative
    # advantage whose mean per-token log(pi_old / pi_theta) exceeds off_policy_delta gets no
    # policy gradient (it stays in the aggregation's denominators, as in the paper's formula).
    off_policy_mask: bool = False
    off_policy_delta: float = 0.05  # our default, in nats per token; the paper gives none
    # Sampler/trainer mismatch correction (Yao et al. 2025, "Your efficient RL framework
    # secretly brings you off-policy RL training"; TIS / MIS): the weight pi_old / pi_sampler
    # per token, or per sequence (the product over its tokens), truncated at is_threshold
    # (min(w, C): TIS) or masking what leaves [1/C, C] (MIS; masked tokens leave the
    # denominators too). Needs grpo.old_logprobs='recompute': with the sampler's log-probs as
    # pi_old the weight is 1.
    is_correction: str = "none"
    is_threshold: float = 2.0

    def __post_init__(self):
        for key, allowed in (
            ("advantage", ADVANTAGES),
            ("ratio", RATIOS),
            ("kl", KL_MODES),
            ("aggregation", AGGREGATIONS),
            ("loss", LOSSES),
            ("is_correction", IS_CORRECTIONS),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"grpo.{key}={getattr(self, key)!r}; allowed: {allowed}")
        for key in ("eps_low", "eps_high", "beta", "adv_eps", "off_policy_delta"):
            if getattr(self, key) < 0:
                raise ValueError(f"grpo.{key}={getattr(self, key)} must be >= 0")
        if self.is_threshold <= 1.0:
            raise ValueError(f"grpo.is_threshold={self.is_threshold} must be > 1")
        if self.loss == "cispo" and self.ratio != "token":
            raise ValueError(
                f"grpo.loss='cispo' weighs each token by its own ratio: grpo.ratio must be "
                f"'token', not {self.ratio!r}"
            )

    @classmethod
    def from_config(cls, g: ml_collections.ConfigDict) -> LossConfig:
        return cls(**{f.name: g[f.name] for f in dataclasses.fields(cls)})

    @property
    def kl_in_loss(self) -> bool:
        return self.beta > 0 and self.kl == "k3_loss"


def advantages(rewards_QG: jax.Array, kind: str = "grpo", eps: float = 1e-4) -> jax.Array:
    """Per-completion advantages from rewards grouped by question, [Q, G] -> [Q, G].

    GRPO's std is the unbiased one (ddof=1), as TRL and verl compute it. A group whose
    rewards are all equal gets exactly 0: in float32 the mean of eight 0.1s is not 0.1, and
    dividing that rounding residue by (std + eps) would give it a spurious push.
    """
    r = rewards_QG.astype(jnp.float32)
    G = r.shape[-1]
    varied = r.max(axis=-1, keepdims=True) > r.min(axis=-1, keepdims=True)
    centred = jnp.where(varied, r - r.mean(axis=-1, keepdims=True), 0.0)
    if kind == "grpo":
        return centred / (r.std(axis=-1, ddof=1, keepdims=True) + eps)
    if kind == "dr_grpo":
        return centred
    if kind == "rloo":
        return centred * G / (G - 1)  # r_i - mean_{j != i} r_j
    raise ValueError(f"grpo.advantage={kind!r}; allowed: {ADVANTAGES}")


def k3(logp_BN: jax.Array, ref_logp_BN: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0
    (Schulman 2020; DeepSeekMath eq. 4)."""
    d = ref_logp_BN - logp_BN
    return jnp.exp(d) - d - 1.0


def kl_penalized_rewards(rewards_B, old_logp_BN, ref_logp_BN, mask_BN, beta: float):
    """kl='k1_reward': r - beta * sum_t (log pi_old - log pi_ref) over each completion's
    tokens, the KL penalty folded into the reward (the sampled sequence's k1 estimate of
    KL(pi_old || ref)), as PPO for language models does (Ziegler et al. 2019, Ouyang et al.
    2022) instead of DeepSeekMath's k3 term in the loss. The advantages are then computed from
    these rewards. Works on NumPy or JAX arrays alike."""
    return rewards_B - beta * ((old_logp_BN - ref_logp_BN) * mask_BN).sum(-1)


def completion_mask(lengths_B: jax.Array, N: int) -> jax.Array:
    """1 on each completion's first `length` tokens (its EOS included), 0 after."""
    return (jnp.arange(N)[None, :] < lengths_B[:, None]).astype(jnp.float32)


def policy_loss(logp_BN, old_logp_BN, ref_logp_BN, adv_B, mask_BN, c: LossConfig, sampler_BN=None):
    """The policy-gradient term (+ beta * k3 KL) aggregated over tokens: (loss, metrics).

    `old_logp` (pi_old), `ref_logp` and `sampler` (the sampler's own log-probs, for
    `c.is_correction`) are constants (stop_gradient); ref may be None when the KL term is off,
    sampler None when no correction is asked for.
    """
    mask = mask_BN.astype(jnp.float32)
    # Padding holds arbitrary log-probs: zero them first, so that no exp() of them can turn
    # into inf * 0 = nan in the value or the gradient.
    valid = mask > 0
    logp_BN = jnp.where(valid, logp_BN, 0.0)
    old = jnp.where(valid, jax.lax.stop_gradient(old_logp_BN), 0.0)
    if ref_logp_BN is not None:
        ref_logp_BN = jnp.where(valid, ref_logp_BN, 0.0)
    n_B = jnp.maximum(mask.sum(-1), 1.0)
    token_log_ratio = logp_BN - old
    log_ratio = token_log_ratio
    if c.ratio == "sequence":  # GSPO: one length-normalised ratio per sequence
        log_ratio = jnp.broadcast_to(((log_ratio * mask).sum(-1) / n_B)[:, None], log_ratio.shape)
    ratio = jnp.exp(log_ratio)
    adv = jax.lax.stop_gradient(adv_B)[:, None].astype(jnp.float32)
    clipped = jnp.clip(ratio, 1.0 - c.eps_low, 1.0 + c.eps_high)
    if c.loss == "cispo":
        per_token = -jax.lax.stop_gradient(clipped) * adv * logp_BN
    else:
        per_token = -jnp.minimum(ratio * adv, clipped * adv)
    metrics = {}
    loss_mask = mask  # the tokens of the aggregation (MIS removes some)
    if c.is_correction != "none":
        weight, loss_mask, is_metrics = sampler_correction(old, sampler_BN, mask, c)
        per_token = per_token * weight
        metrics.update(is_metrics)
    if c.off_policy_mask:
        drift_B = (jax.lax.stop_gradient(-token_log_ratio) * mask).sum(-1) / n_B
        masked_B = (adv_B < 0) & (drift_B > c.off_policy_delta)
        per_token = jnp.where(masked_B[:, None], 0.0, per_token)
        metrics["off_policy_masked"] = masked_B.mean()
    if c.kl_in_loss:
        kl = k3(logp_BN, jax.lax.stop_gradient(ref_logp_BN))
        metrics["kl"] = (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        if c.kl_unbiased:  # the ratio keeps its gradient: the estimator's gradient is unbiased
            kl = jnp.exp(token_log_ratio) * kl
        per_token = per_token + c.beta * kl
    if c.aggregation == "seq_mean":
        n_kept_B = jnp.maximum(loss_mask.sum(-1), 1.0)
        loss = jnp.mean((per_token * loss_mask).sum(-1) / n_kept_B)
    elif c.aggregation == "token_mean":
        loss = (per_token * loss_mask).sum() / jnp.maximum(loss_mask.sum(), 1.0)
    else:  # constant normaliser
        loss = (per_token * loss_mask).sum() / (mask.shape[0] * mask.shape[1])
    is_clipped = ((ratio < 1.0 - c.eps_low) & (adv < 0)) | ((ratio > 1.0 + c.eps_high) & (adv > 0))
    if c.loss == "cispo":  # every weight out of range is clipped, whatever the advantage's sign
        is_clipped = (ratio < 1.0 - c.eps_low) | (ratio > 1.0 + c.eps_high)
    total = jnp.maximum(mask.sum(), 1.0)
    metrics["clip_fraction"] = (is_clipped * mask).sum() / total
    metrics["ratio_mean"] = (ratio * mask).sum() / total
    # |log pi_theta - log pi_old| over the completion tokens: on a step's first update, before
    # any change of the weights, this is the trainer/sampler mismatch (pi_old = the sampler).
    abs_diff = jnp.abs(jax.lax.stop_gradient(token_log_ratio)) * mask
    metrics["logp_diff_mean"] = abs_diff.sum() / total
    metrics["logp_diff_max"] = abs_diff.max()
    return loss, metrics


def sampler_correction(old_BN, sampler_BN, mask_BN, c: LossConfig):
    """TIS / MIS weights from pi_old / pi_sampler (constants): (weight [B, N], the
    aggregation's mask [B, N], metrics). Token modes use each token's ratio, sequence modes
    the product over the sequence's tokens (Yao et al. 2025, sec. 3)."""
    valid = mask_BN > 0
    log_w = jnp.where(valid, old_BN - jax.lax.stop_gradient(sampler_BN), 0.0)
    if c.is_correction.startswith("sequence"):
        log_w = jnp.broadcast_to(log_w.sum(-1, keepdims=True), log_w.shape)
    w = jnp.exp(log_w)
    C = c.is_threshold
    total = jnp.maximum(mask_BN.sum(), 1.0)
    if c.is_correction.endswith("truncate"):
        weight, loss_mask = jnp.minimum(w, C), mask_BN
        changed = (w > C) & valid
    else:
        keep = (w >= 1.0 / C) & (w <= C)
        weight, loss_mask = jnp.ones_like(w), mask_BN * keep
        changed = ~keep & valid
    metrics = {
        "is_weight_mean": (jnp.minimum(w, C) * mask_BN).sum() / total,
        # the share of completion tokens truncated (TIS) or masked (MIS)
        "is_corrected_fraction": changed.sum() / total,
    }
    return weight, loss_mask, metrics
