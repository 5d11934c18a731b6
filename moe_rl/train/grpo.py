"""Recipe 'r1_zero': GRPO with verifiable rewards (DeepSeekMath sec. 4; DeepSeek-R1-Zero).

One GRPO step:
  1. rollout: Q questions x G completions from the current policy (`moe_rl.sampling`), scored
     by rules (`moe_rl.rewards`: the task's verifier + the strict think/answer format);
     with DAPO dynamic sampling, groups whose correctness has zero variance are dropped and
     fresh questions drawn, at most `max_refills` times;
  2. advantages per group (`grpo_loss.advantages`); the sampler's log-probs are the old
     policy's; the frozen reference's log-probs are computed only when beta > 0;
  3. mu passes over the rollouts in minibatches, each an AdamW update of the clipped
     surrogate (+ beta * KL), optionally with the MoE balancing-bias update.

The run: pretrain a base model first unless `init_checkpoint` is given (the pretraining
recipe, resumed if it already ran in <workdir>/base), evaluate it on held-out questions,
run GRPO with checkpoints, metrics and sample completions, evaluate the policy, print a
before/after table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from moe_rl import checkpoint, evaluate, hf, loading, plots, rewards, sampling, sharding
from moe_rl.data import tokenizers
from moe_rl.data.tasks import TEMPLATES, Example, Task, task_from_config
from moe_rl.models import moe, transformer
from moe_rl.models.config import ModelConfig
from moe_rl.train import grpo_loss, lm, loop

# ----------------------------------------------------------------------------------------------
# Sequences and log-probs.


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


def completion_logits(cfg, params, model_state, tokens_QL, seg_QL, pos_QL, P: int, G: int):
    """Logits predicting each completion token [Q, G, N, V], their targets [Q, G, N], and the
    forward's aux dict. Token t of completion j is predicted at the prompt's last slot (t = 0)
    or at the slot before it in its own segment."""
    logits_QLV, _, aux = transformer.forward(
        cfg, params, model_state, tokens_QL, pos_QL, seg_QL, mtp=False, shared_prefix=True
    )
    Q, L = tokens_QL.shape
    N = (L - P) // G
    target = P + np.arange(G)[:, None] * N + np.arange(N)[None]  # [G, N] slots of the tokens
    source = np.where(np.arange(N)[None] == 0, P - 1, target - 1)
    return logits_QLV[:, source], tokens_QL[:, target], aux


def completion_logprobs(cfg, params, model_state, tokens_QL, seg_QL, pos_QL, P, G, temp):
    """log softmax(logits / T) of every completion token, [Q, G, N]."""
    logits, targets, _ = completion_logits(
        cfg, params, model_state, tokens_QL, seg_QL, pos_QL, P, G
    )
    return sampling.token_logprobs(logits, targets, temp)


# ----------------------------------------------------------------------------------------------
# The jitted update.


def make_update(
    cfg: ModelConfig, lc: grpo_loss.LossConfig, tx, temperature: float, bias_rate, state_sh=None
):
    """(state, minibatch, prompt_len, G) -> (state, metrics): one AdamW step on the GRPO loss
    over a minibatch of packed question rows. `state_sh`: on a mesh, the train state's
    shardings, kept by the update (metrics replicated)."""

    def loss_fn(params, model_state, mb, prompt_len, G):
        logits, targets, aux = completion_logits(
            cfg, params, model_state, mb["tokens"], mb["segment_ids"], mb["positions"],
            prompt_len, G,
        )  # fmt: skip
        logits = logits.astype(jnp.float32) / (temperature if temperature > 0 else 1.0)
        logp_all = jax.nn.log_softmax(logits, axis=-1)  # [Q, G, N, V]
        logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
        flat = lambda a: a.reshape(-1, a.shape[-1])  # [Q, G, N] -> [Q*G, N]
        mask = flat(mb["mask"])
        ref = mb.get("ref_logp")
        loss, metrics = grpo_loss.policy_loss(
            flat(logp),
            flat(mb["old_logp"]),
            None if ref is None else flat(ref),
            mb["advantages"].reshape(-1),
            mask,
            lc,
        )
        entropy = flat(-jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1))
        metrics["entropy"] = (entropy * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        counts = transformer.counts_like_bias(cfg, model_state, aux) if cfg.is_moe else None
        return loss, (metrics, counts)

    def update(state: lm.TrainState, mb, prompt_len: int, G: int):
        (loss, (metrics, counts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, mb, prompt_len, G
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = state.model_state
        if cfg.is_moe and bias_rate:
            model_state = jax.tree.map(
                lambda b, c: moe.update_bias(b, c, bias_rate), model_state, counts
            )
        metrics.update(loss=loss, grad_norm=optax.global_norm(grads))
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
        )
        return new_state, metrics

    if state_sh is None:
        return jax.jit(update, static_argnums=(2, 3), donate_argnums=0)
    replicated = sharding.replicated(jax.tree.leaves(state_sh)[0].mesh)
    return jax.jit(
        update, static_argnums=(2, 3), donate_argnums=0, out_shardings=(state_sh, replicated)
    )


# ----------------------------------------------------------------------------------------------
# Rollouts.


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
        """G completions of each example, each prompt prefilled once:
        (texts, tokens [Q,G,N], logprobs [Q,G,N], lengths [Q,G], prompts [Q,P], lengths [Q])."""
        G, tok = self.g.num_generations, self.tokenizer
        _, ids = evaluate.prompts_for(tok, examples, self.t.template, self.t.think_opened)
        P = sampling.bucket(max(map(len, ids)))
        prompt_QP, prompt_len_Q = sampling.left_pad(ids, tok.pad_id, P, len(ids))
        out = sampling.generate(
            self.cfg, params, model_state, ids, key, self.sp,
            eos_id=tok.eos_id, pad_id=tok.pad_id, num_samples=G,
        )  # fmt: skip
        tokens, logp, lengths = (np.asarray(a) for a in jax.device_get(out))
        texts = [tok.decode(row[:n]) for row, n in zip(tokens, lengths, strict=True)]
        Q, N = len(ids), tokens.shape[1]
        shape = (Q, G, N)
        return (texts, tokens.reshape(shape), logp.reshape(shape), lengths.reshape(Q, G),
                prompt_QP, prompt_len_Q)  # fmt: skip

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
            examples = questions.take(Q)
            texts, tokens, logp, lengths, prompt, prompt_len = self.sample_groups(
                params, model_state, examples, jax.random.fold_in(key, rounds)
            )
            examples_S = [ex for ex in examples for _ in range(G)]
            r = self.score(texts, examples_S, lengths.reshape(-1))
            generated += int(lengths.sum())
            sampled_accuracy.append(r["accuracy"])
            for q in range(Q):
                rows = slice(q * G, (q + 1) * G)
                group = dict(
                    prompt=prompt[q], prompt_len=prompt_len[q], tokens=tokens[q], logp=logp[q],
                    lengths=lengths[q], texts=texts[rows], examples=examples_S[rows],
                    rewards={k: v[rows] for k, v in r.items()},
                )  # fmt: skip
                informative = np.ptp(r["accuracy"][rows]) > 0
                (kept if informative or not g.dynamic_sampling else spare).append(group)
            rounds += 1
            sampled += Q
        groups = (kept + spare)[:Q]
        zero_var = np.mean([np.ptp(gr["rewards"]["accuracy"]) == 0 for gr in groups])
        P = max(len(gr["prompt"]) for gr in groups)
        prompt_QP = np.stack(
            [np.pad(gr["prompt"], (P - len(gr["prompt"]), 0), constant_values=tok.pad_id)
             for gr in groups]
        )  # fmt: skip
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
        return Rollout(
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


# ----------------------------------------------------------------------------------------------
# Config.


GSPO_MAX_EPS = 0.01  # the widest clip range accepted for sequence ratios


def validate_grpo_config(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no compilation; errors name the key and the allowed values."""
    g, t = config.grpo, config.task
    grpo_loss.LossConfig.from_config(g)
    sampling.SamplingParams.from_config(config.sampling)
    if t.template not in TEMPLATES:
        raise ValueError(f"config.task.template={t.template!r}; allowed: {TEMPLATES}")
    checks = [
        ("grpo.num_generations", g.num_generations >= 2, ">= 2 (advantages compare a group)"),
        ("grpo.num_questions", g.num_questions >= 1, ">= 1"),
        ("grpo.num_iterations", g.num_iterations >= 1, ">= 1 (mu)"),
        ("grpo.num_steps", g.num_steps >= 1, ">= 1"),
        ("grpo.max_refills", g.max_refills >= 0, ">= 0"),
        (
            "grpo.minibatch_size",
            g.minibatch_size >= 1
            and g.minibatch_size % g.num_generations == 0
            and (g.num_questions * g.num_generations) % g.minibatch_size == 0,
            "a multiple of num_generations (whole groups) dividing num_questions x "
            f"num_generations = {g.num_questions * g.num_generations}",
        ),
        ("grpo.overlong_buffer", 0 <= g.overlong_buffer <= config.sampling.max_new_tokens,
         "in [0, sampling.max_new_tokens]"),
        ("grpo.bias_update_rate", g.bias_update_rate >= 0, ">= 0"),
    ]  # fmt: skip
    for key, ok, allowed in checks:
        if not ok:
            raise ValueError(f"config.{key}={config[key.split('.')[0]][key.split('.')[1]]!r}; "
                             f"allowed: {allowed}")  # fmt: skip
    if g.ratio == "sequence" and max(g.eps_low, g.eps_high) > GSPO_MAX_EPS:
        # A sequence ratio is exp(mean token log-ratio): within ~1e-3 of 1 after one update,
        # so a token-level clip range never clips it.
        raise ValueError(
            f"config.grpo.ratio='sequence' (GSPO) with grpo.eps_low={g.eps_low}, "
            f"grpo.eps_high={g.eps_high}: a sequence ratio that wide clips nothing; allowed: "
            f"<= {GSPO_MAX_EPS} (GSPO, Zheng et al. 2025, uses eps_low=3e-4, eps_high=4e-4)"
        )
    lm.validate_optim(config.optim, "optim")
    evaluate.validate_eval_block(config.eval, "eval")
    if not config.init_checkpoint and "pretrain" in config:  # the base is pretrained first
        pre = ml_collections.ConfigDict(config.pretrain.to_dict())
        lm.validate_train_config(pre, ModelConfig.from_config(config.model), "pretrain.")


# ----------------------------------------------------------------------------------------------
# The recipe.


def base_model(config, cfg: ModelConfig, workdir: str, shardings=None):
    """(params, model_state, description) of the base policy: config.init_checkpoint's newest
    checkpoint (or a Hugging Face model folder), else a model pretrained now with
    config.pretrain into <workdir>/base."""
    source = config.init_checkpoint
    if not source:
        source = os.path.join(workdir, "base")
        pre = ml_collections.ConfigDict(config.pretrain.to_dict())
        pre.model = config.model
        pre.seed = config.seed
        pre.init_checkpoint = ""
        done = checkpoint.Checkpointer(source, read_only=True).latest_step()
        if done is None or done < pre.train.num_steps:
            print(f"Pretraining the base model into {source} ({pre.train.num_steps} steps)")
            lm.run(pre, source)
    # Streamed straight into the (params, state) shardings.
    return loading.load_model(source, cfg, shardings, key="config.init_checkpoint")


def base_tokenizer(config, workdir: str) -> str:
    """config.tokenizer, where 'base' means the base model's own: a Hugging Face base's
    tokenizer.json, the tokenizer/ folder its pretraining wrote (a learned BPE), else the byte
    tokenizer."""
    if config.tokenizer != "base":
        return config.tokenizer
    if hf.is_hf_folder(config.init_checkpoint):
        if not os.path.exists(os.path.join(config.init_checkpoint, "tokenizer.json")):
            raise ValueError(
                f"config.init_checkpoint={config.init_checkpoint!r} has no tokenizer.json: "
                "set --config.tokenizer=<a folder holding the model's tokenizer.json>"
            )
        return config.init_checkpoint
    folder = os.path.join(config.init_checkpoint or os.path.join(workdir, "base"), "tokenizer")
    return folder if os.path.exists(os.path.join(folder, "tokenizer.json")) else "byte"


def _minibatches(ro: Rollout, ref_logp, rows: int, key) -> list[dict]:
    """Shuffled minibatches of `rows` whole question groups."""
    order = np.asarray(jax.random.permutation(key, len(ro.tokens_QL)))
    batches = []
    for i in range(0, len(order), rows):
        idx = order[i : i + rows]
        mb = {
            "tokens": ro.tokens_QL[idx],
            "segment_ids": ro.segment_ids_QL[idx],
            "positions": ro.positions_QL[idx],
            "mask": ro.mask_QGN[idx],
            "old_logp": ro.old_logp_QGN[idx],
            "advantages": ro.advantages_QG[idx],
        }
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
        m[key] = float(np.mean([t[key] for t in train]))
    return m


def append_samples(path: str, step: int, ro: Rollout, n: int) -> None:
    with open(path, "a") as f:
        for i in range(min(n, len(ro.texts))):
            f.write(
                f"=== step {step} | question: {ro.examples[i].question} | reference: "
                f"{ro.examples[i].answer} | reward {ro.rewards['total'][i]:.2f} (accuracy "
                f"{ro.rewards['accuracy'][i]:.0f}, format {ro.rewards['format'][i]:.0f})\n"
                f"{ro.texts[i]}\n\n"
            )


def samples_by_step(workdir: str) -> dict[int, list[str]]:
    """The sample blocks of <workdir>/samples.txt (header line + completion) by GRPO step."""
    path = os.path.join(workdir, "samples.txt")
    out: dict[int, list[str]] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        text = f.read()
    # append_samples' headers start the file or follow a blank line.
    starts = list(re.finditer(r"(?:^|\n\n)=== step (\d+) \|", text))
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = text[m.start() : end].strip("\n")
        out.setdefault(int(m.group(1)), []).append(block + "\n")
    return out


def first_and_last_samples(workdir: str, n: int = 2) -> str:
    """Up to n sampled completions of the first and of the last step that wrote samples: the
    reasoning traces at the start and at the end of training."""
    by_step = samples_by_step(workdir)
    if not by_step:
        return f"no samples in {workdir}/samples.txt"
    steps = sorted(by_step)
    chosen = [steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]
    return "\n".join(block for step in chosen for block in by_step[step][:n])


def before_after_table(before: dict, after: dict, k: int) -> str:
    rows = ["| metric | base | after GRPO |", "| --- | ---: | ---: |"]
    for key in ("pass@1", f"maj@{k}", "format_rate", "mean_length"):
        fmt = "{:.1f}" if key == "mean_length" else "{:.3f}"
        rows.append(f"| {key} | {fmt.format(before[key])} | {fmt.format(after[key])} |")
    return "\n".join(rows)


# --seeds (moe_rl/sweep.py): each seed's row, and the training curves overlaid in seeds.png.
SEED_CURVES = ("sampled_accuracy", "accuracy", "format", "response_length")


def seed_row(result: dict) -> dict[str, float]:
    """Held-out pass@1 before and after GRPO, its gain, the policy's format rate and the mean
    response length (tokens) before and after."""
    before, after = result["before"], result["after"]
    return {
        "base pass@1": before["pass@1"],
        "pass@1": after["pass@1"],
        "gain": after["pass@1"] - before["pass@1"],
        "format": after["format_rate"],
        "base length": before["mean_length"],
        "length": after["mean_length"],
    }


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Recipe 'r1_zero'; `on_step(step, metrics)` is called after each GRPO step (e.g. a live
    plot in a notebook). A Hugging Face `init_checkpoint` brings its own model config."""
    config = hf.with_hf_model(config)
    validate_grpo_config(config)
    mesh = sharding.mesh_from_config(config)
    if mesh is None:
        return _run(config, workdir, None, on_step)
    g = config.grpo
    sharding.check_batch(g.num_questions, mesh, "config.grpo.num_questions")
    sharding.check_batch(
        g.minibatch_size // g.num_generations, mesh, "config.grpo.minibatch_size/num_generations"
    )
    with jax.set_mesh(mesh):
        return _run(config, workdir, mesh, on_step)


def _run(config: ml_collections.ConfigDict, workdir: str, mesh, on_step=None) -> dict:
    cfg = ModelConfig.from_config(config.model)
    g, t = config.grpo, config.task
    lc = grpo_loss.LossConfig.from_config(g)
    sp = sampling.SamplingParams.from_config(config.sampling)
    eval_sp = sampling.SamplingParams.from_config(config.eval.sampling)
    task = task_from_config(t)
    test_examples = task.examples("test", config.eval.num_questions, seed=t.seed)
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    model_sh = None if mesh is None else sharding.model_shardings(cfg, mesh)
    params, model_state, source = base_model(config, cfg, workdir, model_sh)
    if mesh is not None:  # split as in pretraining, before anything runs on the mesh
        params, model_state = (
            jax.device_put(params, model_sh[0]),
            jax.device_put(model_state, model_sh[1]),
        )
    seconds = {"base": time.perf_counter() - started}
    tokenizer = tokenizers.get_tokenizer(base_tokenizer(config, workdir))
    evaluate.check_tokenizer(tokenizer, cfg)
    rl_dir = os.path.join(workdir, "grpo")
    evaluate_on_test = lambda p, s, tag: evaluate.evaluate_policy(
        cfg, p, s, tokenizer, task, test_examples, t=t, e=config.eval, sp=eval_sp,
        key=jax.random.key(config.seed + 1),
    )  # fmt: skip
    # The base's evaluation is reused on resume when it was made for the same question.
    before_path = os.path.join(workdir, "eval_base.json")
    what = {"model": source, "task": t.to_dict(), "eval": config.eval.to_dict()}
    before = None
    if os.path.exists(before_path):
        with open(before_path) as f:
            saved = json.load(f)
        before = saved["metrics"] if saved.get("of") == what else None
    if before is None:
        before, texts, scores, _ = evaluate_on_test(params, model_state, "base")
        evaluate.write_completions(
            os.path.join(workdir, "eval_base.jsonl"), test_examples, texts, scores,
            config.eval.num_samples,
        )  # fmt: skip
        with open(before_path, "w") as f:
            json.dump({"of": what, "metrics": before}, f, indent=2)

    seconds["base_eval"] = time.perf_counter() - started - seconds["base"]
    per_step = g.num_iterations * (g.num_questions * g.num_generations // g.minibatch_size)
    tx = lm.make_optimizer(config.optim, g.num_steps * per_step)
    abstract = jax.eval_shape(
        lambda: lm.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
            rng=jax.random.key(0),
        )
    )
    ckpt = checkpoint.Checkpointer(rl_dir, keep=g.keep_checkpoints)
    questions = QuestionStream(task, t.seed)
    state_sh = row_sh = None
    if mesh is not None:  # the state split as in pretraining; rollout rows split over the batch
        state_sh = sharding.state_shardings(abstract, cfg, mesh)
        abstract = sharding.with_shardings(abstract, state_sh)
        row_sh = sharding.batch_sharding(mesh)
    restored = ckpt.restore_latest(abstract)
    # Copies: the train state's buffers are donated to each update.
    ref = jax.tree.map(jnp.copy, (params, model_state)) if lc.beta > 0 else None
    if restored is not None:
        state, extra, _ = restored
        questions.set_position(extra["questions"])
        grpo_step = extra["grpo_step"]
        print(f"Resuming GRPO in {rl_dir} from step {grpo_step} of {g.num_steps}")
    else:
        state = lm.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
            rng=jax.random.key(config.seed),
        )
        grpo_step = 0
    if state_sh is not None:
        state = jax.device_put(state, state_sh)
    update = make_update(cfg, lc, tx, sp.temperature, g.bias_update_rate, state_sh)
    put = (lambda b: b) if row_sh is None else (lambda b: sharding.put_batch(b, row_sh))
    ref_fn = jax.jit(completion_logprobs, static_argnums=(0, 6, 7, 8))
    roller = Roller(config, cfg, tokenizer, task, sp)
    writer = loop.MetricWriter(workdir)
    samples_path = os.path.join(workdir, "samples.txt")
    rows = []
    bar = tqdm(total=g.num_steps, initial=grpo_step, desc=config.get("name", "grpo"))
    try:
        while grpo_step < g.num_steps:
            key = jax.random.fold_in(jax.random.key(config.seed), grpo_step)
            ro = roller.rollout(state.params, state.model_state, questions, key)
            start = time.perf_counter()
            G = g.num_generations
            ref_logp = None
            if lc.beta > 0:
                packed = put(dict(t=ro.tokens_QL, s=ro.segment_ids_QL, p=ro.positions_QL))
                ref_logp = np.asarray(
                    ref_fn(cfg, *ref, packed["t"], packed["s"], packed["p"],
                           ro.prompt_len, G, sp.temperature)
                )  # fmt: skip
                if lc.kl == "k1_reward":  # r - beta * sum_t (log pi_old - log pi_ref)
                    kl_QG = ((ro.old_logp_QGN - ref_logp) * ro.mask_QGN).sum(-1)
                    ro.rewards["total"] = ro.rewards["total"] - lc.beta * kl_QG.reshape(-1)
                    ro.advantages_QG = np.asarray(
                        grpo_loss.advantages(
                            jnp.asarray(ro.rewards["total"]).reshape(-1, G), lc.advantage,
                            lc.adv_eps,
                        )
                    )  # fmt: skip
            ref_seconds = time.perf_counter() - start
            start = time.perf_counter()
            train = []
            for it in range(g.num_iterations):
                for mb in _minibatches(
                    ro, ref_logp, g.minibatch_size // G, jax.random.fold_in(key, 1000 + it)
                ):
                    state, m = update(state, put(mb), ro.prompt_len, G)
                    train.append(m)
            train = jax.device_get(train)
            grpo_step += 1
            metrics = step_metrics(ro, train)
            metrics.update(ref_seconds=ref_seconds, train_seconds=time.perf_counter() - start)
            metrics["tokens_per_s"] = metrics["generated_tokens"] / metrics["rollout_seconds"]
            loop.check_finite(grpo_step, metrics)
            writer.write(grpo_step, metrics)
            rows.append({"step": grpo_step, **metrics})
            # Every samples_every steps, and always the first and the last step's.
            if g.samples_every and (
                grpo_step % g.samples_every == 0 or grpo_step in (1, g.num_steps)
            ):
                append_samples(samples_path, grpo_step, ro, g.samples_per_write)
            if on_step is not None:
                on_step(grpo_step, metrics)
            bar.update(1)
            bar.set_postfix(
                loop.format_metrics(metrics, ("reward", "accuracy", "format", "response_length"))
            )
            if grpo_step % g.checkpoint_every == 0 or grpo_step == g.num_steps:
                extra = {"grpo_step": grpo_step, "questions": questions.position}
                ckpt.save(grpo_step, state, extra, force=grpo_step == g.num_steps)
    finally:
        bar.close()
        writer.close()
        ckpt.close()

    seconds["grpo"] = time.perf_counter() - started - seconds["base"] - seconds["base_eval"]
    after, texts, scores, prompts = evaluate_on_test(state.params, state.model_state, "policy")
    k = config.eval.num_samples
    evaluate.write_samples(
        os.path.join(workdir, "eval_samples.txt"), test_examples, prompts, texts, scores, k,
        config.eval.num_printed,
    )  # fmt: skip
    evaluate.write_completions(
        os.path.join(workdir, "eval_policy.jsonl"), test_examples, texts, scores, k
    )
    # The held-out results beside the training curves: scalars (metrics.jsonl, TensorBoard)
    # and the before/after table as TensorBoard text.
    writer = loop.MetricWriter(workdir)
    held_out = {
        f"{prefix}{key}": v
        for prefix, m in (("eval_base_", before), ("eval_", after))
        for key, v in m.items()
        if isinstance(v, int | float)
    }
    writer.write(grpo_step, held_out)
    writer.text("eval/before_after", before_after_table(before, after, k), grpo_step)
    writer.close()
    all_rows = loop.read_metrics(workdir)
    plot = plots.plot_grpo(all_rows, os.path.join(workdir, "r1_zero.png"), f"GRPO on {t.name}")
    result: dict[str, Any] = {
        "task": t.name,
        "base": source,
        "before": before,
        "after": after,
        "plot": plot,
        "steps": grpo_step,
        # Wall time of this invocation: what was reused (base model, GRPO steps) costs ~0.
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"\n{t.name}: {len(test_examples)} held-out questions x {k} samples "
        f"(T={eval_sp.temperature}, top-p {eval_sp.top_p})"
    )
    print(before_after_table(before, after, k))
    print(
        "wall time: "
        + ", ".join(f"{name} {v / 60:.1f} min" for name, v in result["seconds"].items())
    )
    return result
