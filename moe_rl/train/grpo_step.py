"""One GRPO step (DeepSeekMath sec. 4.1; DeepSeek-R1-Zero), as a `loop.train_loop` step function.

1. rollout: Q questions x G completions from the current policy, scored by rules
   (`rollout.Roller`; DAPO dynamic sampling refills zero-variance groups); with
   grpo.off_policy_steps=1 from the policy one update older, sampled while the previous step
   updated (`OffPolicyStep`);
2. with grpo.old_logprobs='recompute', pi_old's log-probs from a training forward of the
   weights that sampled (else the sampler's log-probs are pi_old's); the frozen reference's
   log-probs of the completions, only when beta > 0; with kl='k1_reward' the KL penalty goes
   into the rewards and the advantages are recomputed (`grpo_loss.kl_penalized_rewards`);
3. mu passes over the rollouts in shuffled minibatches of whole groups, each an AdamW update
   of the policy loss (`grpo_loss.policy_loss`: GRPO's clipped surrogate or CISPO, + beta *
   k3 KL, with V3.2's masks and TIS/MIS if asked) and, for an MoE with bias_update_rate > 0,
   the balancing-bias update from the real tokens' expert loads;
4. the step's metrics: rewards, lengths, rollout statistics, the updates' means, the
   sampler/trainer mismatch (`mismatch_metrics`), timings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_rl import sampling, sharding
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.train import grpo_loss, train_state
from moe_rl.train.rollout import QuestionStream, Roller, Rollout


def completion_logits(
    cfg, params, model_state, tokens_QL, seg_QL, pos_QL, P: int, G: int, replay=None, apply=True
):
    """Logits predicting each completion token [Q, G, N, V], their targets [Q, G, N], and the
    forward's aux dict. Token t of completion j is predicted at the prompt's last slot (t = 0)
    or at the slot before it in its own segment. `replay`: the sampler's routing
    [Q, M, L, K], replayed (`apply`) or only compared with the model's own (moe.route)."""
    if replay is not None:
        replay = jnp.swapaxes(replay, 0, 1)  # [M, Q, L, K], as the layers take it
    logits_QLV, _, aux = transformer.forward(
        cfg,
        params,
        model_state,
        tokens_QL,
        pos_QL,
        seg_QL,
        mtp=False,
        shared_prefix=(P, G),  # attended by blocks: no scores between completions
        replay=replay,
        replay_apply=apply,
    )
    Q, L = tokens_QL.shape
    N = (L - P) // G
    target = P + np.arange(G)[:, None] * N + np.arange(N)[None]  # [G, N] slots of the tokens
    source = np.where(np.arange(N)[None] == 0, P - 1, target - 1)
    return logits_QLV[:, source], tokens_QL[:, target], aux


def completion_logprobs(
    cfg, params, model_state, tokens_QL, seg_QL, pos_QL, P, G, temp, replay=None, kept=None
):
    """log softmax(logits / T) of every completion token, [Q, G, N] (`replay`: the routing
    replayed; `kept`: the sampling mask applied, `keep_sampling_mask`)."""
    logits, targets, _ = completion_logits(
        cfg, params, model_state, tokens_QL, seg_QL, pos_QL, P, G, replay
    )
    if kept is None:
        return sampling.token_logprobs(logits, targets, temp)
    logits = keep_sampling_mask(logits.astype(jnp.float32) / (temp if temp > 0 else 1.0), kept)
    return sampling.token_logprobs(logits, targets)


def keep_sampling_mask(logits_QGNV: jax.Array, kept_QGNV: jax.Array) -> jax.Array:
    """DeepSeek-V3.2's Keep Sampling Mask (arXiv 2512.02556, sec. 3.1): the tokens the
    sampler's top-k/top-p dropped get -inf, so pi_theta is the same truncated distribution
    the sampler drew from (and reported log-probs of). A slot with nothing kept (after a
    completion's end) keeps its logits."""
    recorded = kept_QGNV.any(-1, keepdims=True)
    return jnp.where(kept_QGNV | ~recorded, logits_QGNV, -jnp.inf)


def routing_mismatch(aux: dict) -> jax.Array:
    """The share of (valid token, MoE layer) routing decisions of this forward whose experts
    differ from the sampler's recorded ones."""
    return jnp.sum(aux["replay_differs"]) / jnp.maximum(jnp.sum(aux["replay_tokens"]), 1.0)


def make_update(
    cfg: ModelConfig,
    lc: grpo_loss.LossConfig,
    tx,
    temperature: float,
    bias_rate,
    state_sh=None,
    routing_replay: bool = False,
):
    """(state, minibatch, prompt_len, G) -> (state, metrics): one AdamW step on the GRPO loss
    over a minibatch of packed question rows (`state.step` counts GRPO steps: not moved).
    `state_sh`: on a mesh, the train state's shardings, kept by the update (metrics
    replicated). A minibatch with the sampler's routing ('replay') has it replayed if
    `routing_replay`, else only compared (the 'routing_mismatch' metric)."""

    def loss_fn(params, model_state, mb, prompt_len, G):
        logits, targets, aux = completion_logits(
            cfg,
            params,
            model_state,
            mb["tokens"],
            mb["segment_ids"],
            mb["positions"],
            prompt_len,
            G,
            mb.get("replay"),
            routing_replay,
        )
        logits = logits.astype(jnp.float32) / (temperature if temperature > 0 else 1.0)
        if "kept" in mb:
            logits = keep_sampling_mask(logits, mb["kept"])
        logp_all = jax.nn.log_softmax(logits, axis=-1)  # [Q, G, N, V]
        logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
        flat = lambda a: a.reshape(-1, a.shape[-1])  # [Q, G, N] -> [Q*G, N]
        mask = flat(mb["mask"])
        ref, sampler = mb.get("ref_logp"), mb.get("sampler_logp")
        loss, metrics = grpo_loss.policy_loss(
            flat(logp),
            flat(mb["old_logp"]),
            None if ref is None else flat(ref),
            mb["advantages"].reshape(-1),
            mask,
            lc,
            None if sampler is None else flat(sampler),
        )
        p_logp = jnp.where(jnp.isfinite(logp_all), jnp.exp(logp_all) * logp_all, 0.0)
        entropy = flat(-jnp.sum(p_logp, axis=-1))
        metrics["entropy"] = (entropy * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        if "replay" in mb:
            metrics["routing_mismatch"] = routing_mismatch(aux)
        counts = transformer.counts_like_bias(cfg, model_state, aux) if cfg.is_moe else None
        return loss, (metrics, counts)

    def update(state: train_state.TrainState, mb, prompt_len: int, G: int):
        (loss, (metrics, counts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, mb, prompt_len, G
        )
        metrics.update(loss=loss, grad_norm=optax.global_norm(grads))
        return train_state.apply_gradients(state, grads, tx, counts, bias_rate), metrics

    if state_sh is None:
        return jax.jit(update, static_argnums=(2, 3), donate_argnums=0)
    replicated = sharding.replicated(jax.tree.leaves(state_sh)[0].mesh)
    return jax.jit(
        update, static_argnums=(2, 3), donate_argnums=0, out_shardings=(state_sh, replicated)
    )


def minibatches(ro: Rollout, ref_logp, rows: int, key, old_logp=None) -> list[dict]:
    """Shuffled minibatches of `rows` whole question groups. `old_logp`: pi_old recomputed by
    the trainer (grpo.old_logprobs='recompute'; the sampler's then go along as
    'sampler_logp'), else the sampler's are pi_old."""
    order = np.asarray(jax.random.permutation(key, len(ro.tokens_QL)))
    batches = []
    for i in range(0, len(order), rows):
        idx = order[i : i + rows]
        mb = {
            "tokens": ro.tokens_QL[idx],
            "segment_ids": ro.segment_ids_QL[idx],
            "positions": ro.positions_QL[idx],
            "mask": ro.mask_QGN[idx],
            "old_logp": (ro.old_logp_QGN if old_logp is None else old_logp)[idx],
            "advantages": ro.advantages_QG[idx],
        }
        if old_logp is not None:
            mb["sampler_logp"] = ro.old_logp_QGN[idx]
        if ro.routing_QMLK is not None:
            mb["replay"] = ro.routing_QMLK[idx]
        if ro.kept_QGNV is not None:
            mb["kept"] = ro.kept_QGNV[idx]
        if ref_logp is not None:
            mb["ref_logp"] = ref_logp[idx]
        batches.append(mb)
    return batches


def step_metrics(ro: Rollout, train: list[dict]) -> dict[str, float]:
    acc, lengths = ro.rewards["accuracy"], ro.lengths_QG.reshape(-1).astype(np.float64)
    correct = acc >= 1.0
    m = {
        "reward": float(ro.rewards["total"].mean()),
        "reward_std": float(ro.rewards["total"].std()),
        "accuracy": float(acc.mean()),
        "format": float(ro.rewards["format"].mean()),
        "response_length": float(lengths.mean()),
        **{k: float(v) for k, v in ro.stats.items()},
    }
    if correct.any():  # lengths of correct / incorrect answers, when there are any
        m["length_correct"] = float(lengths[correct].mean())
    if (~correct).any():
        m["length_incorrect"] = float(lengths[~correct].mean())
    for key in train[0]:
        reduce = np.max if key.endswith("_max") else np.mean
        m[key] = float(reduce([t[key] for t in train]))
    return m


def mismatch_metrics(ro: Rollout, old_logp, train: list[dict]) -> dict[str, float]:
    """|log pi_sampler - log pi_trainer| over the completion tokens, at the sampling weights:
    from the recomputed pi_old when there is one, else from the step's first update (whose
    forward runs on the weights that sampled, pi_old being the sampler's)."""
    m = {}
    if "routing_mismatch" in train[0]:  # the first update's forward: the sampling weights
        m["routing_mismatch"] = float(train[0]["routing_mismatch"])
    if old_logp is None:
        m["mismatch_mean"] = float(train[0]["logp_diff_mean"])
        m["mismatch_max"] = float(train[0]["logp_diff_max"])
        return m
    mask = ro.mask_QGN > 0
    diff = np.abs(np.asarray(old_logp, np.float64) - ro.old_logp_QGN)[mask]
    return {**m, "mismatch_mean": float(diff.mean()), "mismatch_max": float(diff.max())}


def make_step(
    cfg: ModelConfig,
    lc: grpo_loss.LossConfig,
    tx: optax.GradientTransformation,
    *,
    roller: Roller,
    questions: QuestionStream,
    ref: tuple | None,
    seed: int,
    num_iterations: int,
    minibatch_size: int,
    bias_rate: float,
    old_logprobs: str = "sampler",
    routing_replay: bool = False,
    state_sh=None,
    row_sh=None,
    on_rollout: Callable[[int, Rollout], None] | None = None,
    off_policy_steps: int = 0,
    num_steps: int = 0,
) -> Callable:
    """`step(state, n) -> (state, metrics)`: GRPO step n (1-based) from `state` (see the module
    docstring). `ref`: the reference (params, model_state), None when beta = 0.
    `old_logprobs`: 'sampler' (pi_old is the sampler's log-probs) or 'recompute' (a training
    forward of the weights at the step's start, before its first update: the weights that
    sampled, or with off_policy_steps=1 the next ones). `routing_replay`: every
    training-side forward (update, recomputed pi_old, reference) routes each token to the
    experts the sampler chose (R3; V3.2's Keep Routing). On a mesh,
    `state_sh` are the state's shardings and `row_sh` splits the packed rows over the batch
    axes. `on_rollout(n, rollout)` sees each step's scored completions (e.g. samples.txt).
    `off_policy_steps=1`: an `OffPolicyStep` over `OffPolicyState`s, sampling step n+1's
    rollouts while step n updates (no prefetch after step `num_steps`)."""
    temperature = roller.sp.temperature
    G = roller.g.num_generations
    update = make_update(cfg, lc, tx, temperature, bias_rate, state_sh, routing_replay)
    ref_fn = jax.jit(completion_logprobs, static_argnums=(0, 6, 7, 8))
    put = (lambda b: b) if row_sh is None else (lambda b: sharding.put_batch(b, row_sh))

    def collect(params, model_state, n: int) -> Rollout:  # step n's rollouts
        return roller.rollout(params, model_state, questions, step_key(n))

    def step_key(n: int) -> jax.Array:
        return jax.random.fold_in(jax.random.key(seed), n - 1)

    def learn(state: train_state.TrainState, ro: Rollout, n: int):
        key = step_key(n)
        start = time.perf_counter()
        ref_logp = old_logp = None
        replay = ro.routing_QMLK if routing_replay else None
        packed = lambda kept=None: put(
            dict(t=ro.tokens_QL, s=ro.segment_ids_QL, p=ro.positions_QL)
            | ({} if replay is None else dict(r=replay))
            | ({} if kept is None else dict(k=kept))
        )
        logprobs = lambda params, model_state, b: np.asarray(
            ref_fn(
                cfg,
                params,
                model_state,
                b["t"],
                b["s"],
                b["p"],
                ro.prompt_len,
                G,
                temperature,
                b.get("r"),
                b.get("k"),
            )
        )
        if old_logprobs == "recompute":  # the policy's: with the sampler's mask if kept
            old_logp = logprobs(state.params, state.model_state, packed(ro.kept_QGNV))
        if lc.beta > 0:
            ref_logp = logprobs(*ref, packed())
            if lc.kl == "k1_reward":
                flat = lambda a: a.reshape(-1, a.shape[-1])  # [Q, G, N] -> [Q*G, N]
                ro.rewards["total"] = grpo_loss.kl_penalized_rewards(
                    ro.rewards["total"],
                    flat(ro.old_logp_QGN if old_logp is None else old_logp),
                    flat(ref_logp),
                    flat(ro.mask_QGN),
                    lc.beta,
                )
                totals_QG = jnp.asarray(ro.rewards["total"]).reshape(-1, G)
                ro.advantages_QG = np.asarray(
                    grpo_loss.advantages(totals_QG, lc.advantage, lc.adv_eps)
                )
        ref_seconds = time.perf_counter() - start
        start = time.perf_counter()
        train = []
        for it in range(num_iterations):
            order_key = jax.random.fold_in(key, 1000 + it)
            for mb in minibatches(ro, ref_logp, minibatch_size // G, order_key, old_logp):
                state, m = update(state, put(mb), ro.prompt_len, G)
                train.append(m)
        train = jax.device_get(train)
        state = state.replace(step=state.step + 1)
        metrics = step_metrics(ro, train)
        metrics.update(mismatch_metrics(ro, old_logp, train))
        metrics.update(ref_seconds=ref_seconds, train_seconds=time.perf_counter() - start)
        metrics["tokens_per_s"] = metrics["generated_tokens"] / metrics["rollout_seconds"]
        if on_rollout is not None:
            on_rollout(n, ro)
        return state, metrics

    if off_policy_steps == 0:
        return lambda state, n: learn(state, collect(state.params, state.model_state, n), n)
    return OffPolicyStep(collect, learn, questions, num_steps)


# ----------------------------------------------------------------------------------------------
# One-step-off-policy rollouts (grpo.off_policy_steps=1).


@flax.struct.dataclass
class OffPolicyState(train_state.TrainState):
    """The loop state of one-step-off-policy GRPO: the train state and the weights that sample
    the next step's rollouts (the policy before the last update), checkpointed together, so a
    resumed run samples that step again with the same weights (its top level holds the
    train state's 'params' and 'model_state': a checkpoint still loads as a model)."""

    sampler: Any  # {'params', 'model_state'}
    sampler_step: jax.Array  # the number of updates behind those weights (their version)

    @classmethod
    def start(cls, state: train_state.TrainState) -> OffPolicyState:
        """Step 0: the sampler holds a copy of the initial weights (the updates donate the
        train state's buffers)."""
        return cls.of(state, _copy_weights(state), jnp.zeros((), jnp.int32))

    @classmethod
    def of(cls, state: train_state.TrainState, sampler, sampler_step) -> OffPolicyState:
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        return cls(**fields, sampler=sampler, sampler_step=sampler_step)

    def as_train_state(self) -> train_state.TrainState:
        names = [f.name for f in dataclasses.fields(train_state.TrainState)]
        return train_state.TrainState(**{k: getattr(self, k) for k in names})


def off_policy_shardings(state_sh: train_state.TrainState, model_sh) -> OffPolicyState:
    """An `OffPolicyState`'s shardings from the train state's and the model's (params,
    model_state) ones; the version replicated like the step."""
    params_sh, model_state_sh = model_sh
    sampler = {"params": params_sh, "model_state": model_state_sh}
    return OffPolicyState.of(state_sh, sampler, state_sh.step)


def _copy_weights(state) -> dict:
    """A copy of the policy's weights that outlives the next update's donated buffers."""
    copied = jax.tree.map(jnp.copy, {"params": state.params, "model_state": state.model_state})
    return jax.block_until_ready(copied)


class OffPolicyStep:
    """One-step-off-policy GRPO (`grpo.off_policy_steps=1`): while step n updates the policy
    on its rollouts, step n+1's are sampled in a background thread with the weights of step
    n's start, so every batch after the first is one policy version old (Noukhovitch et al.
    2024, "Asynchronous RLHF", arXiv 2410.18252: one-step-off-policy PPO/online DPO). The
    ratio's pi_old is then the sampler's (grpo.old_logprobs='sampler'), or with 'recompute'
    the current weights' (the proximal policy of AReaL's decoupled PPO, Fu et al. 2025, arXiv
    2505.24298), the staleness then weighed by grpo.is_correction like the sampler/trainer
    mismatch.

    Determinism: each step's rollouts depend only on the sampling weights, the step's key and
    the question stream's position, all checkpointed (`OffPolicyState.sampler`,
    `position`), so a killed run that resumes after step n samples step n+1 again as it was.
    On one device both threads share it: the overlap hides the host's part of a rollout
    (decoding, scoring, dynamic sampling's rounds) and the device's idle gaps."""

    def __init__(self, collect: Callable, learn: Callable, questions: QuestionStream, num_steps):
        self.collect, self.learn, self.num_steps = collect, learn, num_steps
        self.questions = questions
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
        self.pending: dict[int, tuple[Future, int]] = {}  # step -> (its rollout, version)
        self.position: int | None = None  # the question stream's, before the next rollout

    def __call__(self, state: OffPolicyState, n: int):
        if n in self.pending:
            future, version = self.pending.pop(n)
            ro = future.result()
        else:  # the first step, or the first after a resume: its sampler is in the state
            version = int(state.sampler_step)
            ro = self.collect(state.sampler["params"], state.sampler["model_state"], n)
        weights = _copy_weights(state)  # step n's start: they sample step n+1
        self.position = self.questions.position
        if n < self.num_steps:
            rollout = self.pool.submit(
                self.collect, weights["params"], weights["model_state"], n + 1
            )
            self.pending[n + 1] = (rollout, n - 1)
        train, metrics = self.learn(state.as_train_state(), ro, n)
        metrics.update(sampler_version=float(version), policy_lag=float(n - 1 - version))
        return OffPolicyState.of(train, weights, jnp.asarray(n - 1, jnp.int32)), metrics

    def close(self) -> None:
        """Waits for a rollout in flight (a stopped run's prefetch) and ends the thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)
