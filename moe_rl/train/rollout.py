"""GRPO's rollouts: groups of completions sampled, scored by rules and packed for the update.

`Roller.rollout` samples G completions of Q training questions from the current policy
(`moe_rl.sampling`, each prompt prefilled once), scores them (`moe_rl.rewards`: the task's
verifier + the strict think/answer format + DAPO's overlong penalty), with DAPO dynamic
sampling replaces zero-variance groups by fresh questions' groups, computes the group
advantages, and packs each question's prompt and its G completions into one row
(`pack_groups`: the shared-prefix layout the update and the reference read).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl import evaluate, rewards, sampling
from moe_rl.data.tasks import Example, Task
from moe_rl.train import grpo_loss


@dataclasses.dataclass
class Rollout:
    """One GRPO batch on the host, packed by question: row q is its prompt (left-padded to P)
    followed by its G completions of N tokens, segment ids 1 (prompt), 2, ..., G+1."""

    tokens_QL: np.ndarray  # [Q, P + G*N]
    segment_ids_QL: np.ndarray  # 0 on prompt padding
    positions_QL: np.ndarray  # each completion continues its prompt's positions
    mask_QGN: np.ndarray  # completion tokens up to and including the first EOS
    old_logp_QGN: np.ndarray  # sampler log-probs (the old policy)
    lengths_QG: np.ndarray
    texts: list[str]  # question-major, Q*G
    examples: list[Example]  # one per completion
    rewards: dict[str, np.ndarray]  # accuracy, format, overlong, total: [Q*G]
    advantages_QG: np.ndarray
    prompt_len: int
    stats: dict[str, float]
    # The experts the sampler chose for each token of the packed rows [Q, n_moe_layers,
    # P + G*N, K] (-1 where none was recorded: padding, the tokens never fed), for routing
    # replay and the routing-mismatch metric; None for a dense model. Rows first, like the
    # other arrays, so that a mesh splits them alike.
    routing_QMLK: np.ndarray | None = None
    # grpo.keep_sampling_mask: the tokens the sampler's top-k/top-p kept [Q, G, N, V]
    kept_QGNV: np.ndarray | None = None


def pack_groups(prompt_QP, prompt_len_Q, tokens_QGN, lengths_QG=None):
    """(tokens, segment ids, positions) [Q, P + G*N] of the shared-prefix layout. With
    `lengths_QG`, the padding after each completion's end gets segment 0 like the prompt's
    padding: it is then not a token of the batch (MoE expert loads count real tokens only),
    and the real tokens, which never attend to later slots, compute exactly as before."""
    Q, P = prompt_QP.shape
    _, G, N = tokens_QGN.shape
    pad_Q1 = (P - prompt_len_Q)[:, None]
    seg_prompt = (np.arange(P)[None] >= pad_Q1).astype(np.int32)
    pos_prompt = np.maximum(np.arange(P)[None] - pad_Q1, 0)
    seg_QGN = np.broadcast_to(np.arange(2, G + 2)[None, :, None], (Q, G, N))
    if lengths_QG is not None:
        seg_QGN = np.where(np.arange(N) < np.asarray(lengths_QG)[..., None], seg_QGN, 0)
    seg_comp = seg_QGN.reshape(Q, G * N)
    pos_comp = prompt_len_Q[:, None] + np.tile(np.arange(N), G)[None]
    tokens = np.concatenate([prompt_QP, tokens_QGN.reshape(Q, G * N)], axis=1)
    segments = np.concatenate([seg_prompt, seg_comp], axis=1).astype(np.int32)
    positions = np.concatenate([pos_prompt, pos_comp], axis=1).astype(np.int32)
    return tokens, segments, positions


def pack_routing(groups: list[dict], P: int) -> np.ndarray:
    """The groups' recorded routing in the packed layout of `pack_groups`: [Q, M, P + G*N, K],
    each prompt's right-aligned in its P slots, -1 on the padding before it."""
    rows = []
    for gr in groups:
        prompt_MpK, comp_MGNK = gr["prompt_routing"], gr["routing"]
        M, G, N, K = comp_MGNK.shape
        pad = np.full((M, P - prompt_MpK.shape[1], K), -1, np.int32)
        rows.append(np.concatenate([pad, prompt_MpK, comp_MGNK.reshape(M, G * N, K)], axis=1))
    return np.stack(rows).astype(np.int32)


def pack_samples(prompts, out: sampling.Samples, G: int, pad_id: int):
    """A `sampling.generate(..., num_samples=G)` output of `prompts` in the packed training
    layout: (tokens, segment ids, positions) [Q, P + G*N], the lengths [Q, G], the prompt
    length P, and with `out.routing` the record for replay [Q, M, P + G*N, K] (else None),
    P being the sampler's prompt bucket."""
    Q, N = len(prompts), out.tokens.shape[1]
    lengths_QG = np.asarray(out.lengths).reshape(Q, G)
    P = sampling.bucket(max(map(len, prompts)))
    prompt_QP, prompt_len_Q = sampling.left_pad(prompts, pad_id, P, Q)
    packed = pack_groups(
        prompt_QP, prompt_len_Q, np.asarray(out.tokens).reshape(Q, G, N), lengths_QG
    )
    replay = None
    if out.routing is not None:
        M, _, _, K = out.routing.shape
        routing = np.asarray(out.routing).reshape(M, Q, G, N, K)
        prompt_routing = np.asarray(out.prompt_routing)
        groups = [
            dict(routing=routing[:, q], prompt_routing=prompt_routing[:, q, P - prompt_len_Q[q] :])
            for q in range(Q)
        ]
        replay = pack_routing(groups, P)
    return packed, lengths_QG, P, replay


def refill_size(refill: str, num_questions: int, missing: int) -> int:
    """Questions a refill round samples (grpo.refill): 'batch' a whole batch, 'missing' the
    missing groups' count rounded up to a power of two, at most the batch."""
    if refill == "batch":
        return num_questions
    return min(num_questions, 1 << (missing - 1).bit_length())


class QuestionStream:
    """The task's training questions in a fixed order; its position is checkpointed."""

    def __init__(self, task: Task, seed: int):
        self.task, self.seed, self.position = task, seed, 0
        self._it = task.stream("train", seed)

    def take(self, n: int) -> list[Example]:
        self.position += n
        return [next(self._it) for _ in range(n)]

    def set_position(self, position: int) -> None:
        self._it = self.task.stream("train", self.seed)
        self.position = 0
        self.take(position)


class Roller:
    """Samples and scores groups of completions (host side of a GRPO step)."""

    def __init__(self, config, cfg, tokenizer, task, sp: sampling.SamplingParams):
        self.config, self.cfg, self.tokenizer, self.task, self.sp = config, cfg, tokenizer, task, sp
        self.g, self.t = config.grpo, config.task

    def sample_groups(self, params, model_state, examples, key):
        """G completions of each example, each prompt prefilled once: (texts, tokens [Q,G,N],
        logprobs [Q,G,N], lengths [Q,G], prompts [Q,P], lengths [Q], recorded), `recorded`
        what the sampler kept besides: an MoE's 'routing' [M,Q,G,N,K] and 'prompt_routing'
        [M,Q,P,K], with grpo.keep_sampling_mask the 'kept' tokens [Q,G,N,V]."""
        G, tok = self.g.num_generations, self.tokenizer
        _, ids = evaluate.prompts_for(tok, examples, self.t.template, self.t.think_opened)
        P = sampling.bucket(max(map(len, ids)))
        prompt_QP, prompt_len_Q = sampling.left_pad(ids, tok.pad_id, P, len(ids))
        out = sampling.generate(
            self.cfg,
            params,
            model_state,
            ids,
            key,
            self.sp,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            num_samples=G,
            record_routing=self.cfg.is_moe,
            keep_mask=self.g.keep_sampling_mask,
        )
        out = jax.device_get(out)
        tokens, logp, lengths = (np.asarray(a) for a in out[:3])
        texts = [tok.decode(row[:n]) for row, n in zip(tokens, lengths, strict=True)]
        Q, N = len(ids), tokens.shape[1]
        shape = (Q, G, N)
        recorded = {}
        if out.routing is not None:
            M, _, _, K = out.routing.shape
            recorded["routing"] = np.asarray(out.routing).reshape(M, Q, G, N, K)
            recorded["prompt_routing"] = np.asarray(out.prompt_routing)
        if out.kept is not None:
            recorded["kept"] = np.asarray(out.kept).reshape(Q, G, N, -1)
        return (
            texts,
            tokens.reshape(shape),
            logp.reshape(shape),
            lengths.reshape(Q, G),
            prompt_QP,
            prompt_len_Q,
            recorded,
        )

    def score(self, texts, examples_S, lengths):
        g = self.g
        overlong = g.overlong_buffer > 0
        return rewards.compute_rewards(
            texts,
            examples_S,
            self.task,
            think_opened=self.t.think_opened,
            use_math_verify=g.use_math_verify,
            num_tokens=lengths if overlong else None,
            max_len=self.sp.max_new_tokens if overlong else None,
            cache_len=g.overlong_buffer if overlong else None,
            accuracy_weight=g.accuracy_weight,
            format_weight=g.format_weight,
        )

    def rollout(self, params, model_state, questions: QuestionStream, key) -> Rollout:
        """Q groups of G; with dynamic sampling, zero-variance groups are replaced by fresh
        questions' groups (at most max_refills extra rounds; then the rest are kept)."""
        g, G, Q = self.g, self.g.num_generations, self.g.num_questions
        tok = self.tokenizer
        kept: list[dict] = []  # informative groups
        spare: list[dict] = []  # zero-variance groups, used only to fill the batch
        start, rounds, sampled, generated = time.perf_counter(), 0, 0, 0
        sampled_accuracy = []  # of every completion sampled, before dynamic sampling's filter
        while len(kept) < Q and rounds <= (g.max_refills if g.dynamic_sampling else 0):
            n = Q if rounds == 0 else refill_size(g.refill, Q, Q - len(kept))
            examples = questions.take(n)
            texts, tokens, logp, lengths, prompt, prompt_len, recorded = self.sample_groups(
                params, model_state, examples, jax.random.fold_in(key, rounds)
            )
            examples_S = [ex for ex in examples for _ in range(G)]
            r = self.score(texts, examples_S, lengths.reshape(-1))
            generated += int(lengths.sum())
            sampled_accuracy.append(r["accuracy"])
            for q in range(n):
                rows = slice(q * G, (q + 1) * G)
                group = dict(
                    prompt=prompt[q],
                    prompt_len=prompt_len[q],
                    tokens=tokens[q],
                    logp=logp[q],
                    lengths=lengths[q],
                    texts=texts[rows],
                    examples=examples_S[rows],
                    rewards={k: v[rows] for k, v in r.items()},
                )
                if "routing" in recorded:  # [M, G, N, K], the prompt's [M, P_q, K]
                    group["routing"] = recorded["routing"][:, q]
                    group["prompt_routing"] = recorded["prompt_routing"][:, q, -prompt_len[q] :]
                if "kept" in recorded:
                    group["kept"] = recorded["kept"][q]  # [G, N, V]
                informative = np.ptp(r["accuracy"][rows]) > 0
                (kept if informative or not g.dynamic_sampling else spare).append(group)
            rounds += 1
            sampled += n
        groups = (kept + spare)[:Q]
        zero_var = np.mean([np.ptp(gr["rewards"]["accuracy"]) == 0 for gr in groups])
        P = max(len(gr["prompt"]) for gr in groups)
        prompt_QP = np.stack(
            [
                np.pad(gr["prompt"], (P - len(gr["prompt"]), 0), constant_values=tok.pad_id)
                for gr in groups
            ]
        )
        stack = lambda key: np.stack([gr[key] for gr in groups])
        tokens_QGN, lengths_QG = stack("tokens"), stack("lengths")
        tokens_QL, seg_QL, pos_QL = pack_groups(
            prompt_QP, stack("prompt_len"), tokens_QGN, lengths_QG
        )
        rew = {k: np.concatenate([gr["rewards"][k] for gr in groups]) for k in r}
        N = tokens_QGN.shape[-1]
        mask_QGN = (np.arange(N) < lengths_QG[..., None]).astype(np.float32)
        last_QG = np.take_along_axis(tokens_QGN, (lengths_QG - 1)[..., None], axis=-1)[..., 0]
        truncated_QG = (lengths_QG == N) & (last_QG != tok.eos_id)
        if g.overlong_filter:  # DAPO: truncated completions carry no gradient
            mask_QGN = mask_QGN * (~truncated_QG)[..., None]
        adv_QG = grpo_loss.advantages(
            jnp.asarray(rew["total"]).reshape(Q, G), g.advantage, g.adv_eps
        )
        routing_QMLK = None
        if "routing" in groups[0]:
            routing_QMLK = pack_routing(groups, P)
        return Rollout(
            routing_QMLK=routing_QMLK,
            kept_QGNV=stack("kept") if "kept" in groups[0] else None,
            tokens_QL=tokens_QL,
            segment_ids_QL=seg_QL,
            positions_QL=pos_QL,
            mask_QGN=mask_QGN,
            old_logp_QGN=stack("logp"),
            lengths_QG=lengths_QG,
            texts=[t for gr in groups for t in gr["texts"]],
            examples=[e for gr in groups for e in gr["examples"]],
            rewards=rew,
            advantages_QG=np.asarray(adv_QG),
            prompt_len=P,
            stats={
                "rollout_seconds": time.perf_counter() - start,
                "generated_tokens": generated,
                "refills": rounds - 1,
                "questions_sampled": sampled,
                # The policy's training-split accuracy: `accuracy` (of the groups kept) is
                # biased toward 0.5 by dynamic sampling, this one is not.
                "sampled_accuracy": float(np.concatenate(sampled_accuracy).mean()),
                "zero_variance_groups": float(zero_var),
                "truncated_rate": float(truncated_QG.mean()),
            },
        )
