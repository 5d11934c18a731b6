"""GRPO with verifiable rewards (DeepSeekMath sec. 4; DeepSeek-R1-Zero), the library of the
'r1_zero' recipe (moe_rl/recipes/r1_zero.py): the config checks, the base's tokenizer, GRPO from
a base through `loop.train_loop` (`train`: the step is `grpo_step.make_step`, the rollouts
`rollout.Roller`) with checkpoints, metrics and sample completions, and the held-out evaluation
of the base and the policy (`HeldOut`)."""

from __future__ import annotations

import itertools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections

from moe_rl import checkpoint, evaluate, hf, sampling, sharding
from moe_rl.data.tasks import TEMPLATES, Task
from moe_rl.models.config import ModelConfig
from moe_rl.train import grpo_loss, grpo_step, lm, loop, train_state
from moe_rl.train.rollout import QuestionStream, Roller, Rollout

# ----------------------------------------------------------------------------------------------
# Config.


GSPO_MAX_EPS = 0.01  # the widest clip range accepted for sequence ratios


OLD_LOGPROBS = ("sampler", "recompute")
OFF_POLICY_STEPS = (0, 1)
REFILLS = ("batch", "missing")  # grpo.refill, rollout.refill_size


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
        (
            "grpo.overlong_buffer",
            0 <= g.overlong_buffer <= config.sampling.max_new_tokens,
            "in [0, sampling.max_new_tokens]",
        ),
        ("grpo.bias_update_rate", g.bias_update_rate >= 0, ">= 0"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise ValueError(
                f"config.{key}={config[key.split('.')[0]][key.split('.')[1]]!r}; allowed: {allowed}"
            )
    if g.routing_replay and not ModelConfig.from_config(config.model).is_moe:
        raise ValueError(
            "config.grpo.routing_replay=True replays an MoE's expert choices: config.model has "
            "no routed experts (model.n_routed_experts=0)"
        )
    if g.refill not in REFILLS:
        raise ValueError(f"config.grpo.refill={g.refill!r}; allowed: {REFILLS}")
    if g.off_policy_steps not in OFF_POLICY_STEPS:
        raise ValueError(
            f"config.grpo.off_policy_steps={g.off_policy_steps!r}; allowed: {OFF_POLICY_STEPS} "
            "(0: sample with the weights being updated; 1: one step behind, overlapped)"
        )
    if g.old_logprobs not in OLD_LOGPROBS:
        raise ValueError(f"config.grpo.old_logprobs={g.old_logprobs!r}; allowed: {OLD_LOGPROBS}")
    if g.is_correction != "none" and g.old_logprobs != "recompute":
        raise ValueError(
            f"config.grpo.is_correction={g.is_correction!r} weighs pi_old against the sampler: "
            "with grpo.old_logprobs='sampler' the weight is 1; set grpo.old_logprobs='recompute'"
        )
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


def train(
    config,
    cfg: ModelConfig,
    task: Task,
    tokenizer,
    params,
    model_state,
    workdir,
    mesh,
    on_step=None,
) -> train_state.TrainState:
    """GRPO from the base (params, model_state) through `loop.train_loop`, checkpointed in
    <workdir>/grpo with the question stream's position, resumed from its newest checkpoint;
    metrics in <workdir>/metrics.jsonl, sampled completions in <workdir>/samples.txt."""
    g = config.grpo
    lc = grpo_loss.LossConfig.from_config(g)
    sp = sampling.SamplingParams.from_config(config.sampling)
    updates_per_step = g.num_iterations * (g.num_questions * g.num_generations // g.minibatch_size)
    tx = train_state.make_optimizer(config.optim, g.num_steps * updates_per_step)
    off_policy = g.off_policy_steps > 0  # the loop's state then holds the sampling weights too

    def fresh():
        state = train_state.create(params, model_state, tx, jax.random.key(config.seed))
        return grpo_step.OffPolicyState.start(state) if off_policy else state

    abstract = jax.eval_shape(fresh)
    state_sh = row_sh = loop_sh = None
    if mesh is not None:  # the state split as in pretraining; rollout rows split over the batch
        state_sh = sharding.state_shardings(
            abstract.as_train_state() if off_policy else abstract, cfg, mesh
        )
        loop_sh = state_sh
        if off_policy:
            model_sh = sharding.model_shardings(cfg, mesh)
            loop_sh = grpo_step.off_policy_shardings(state_sh, model_sh)
        abstract = sharding.with_shardings(abstract, loop_sh)
        row_sh = sharding.batch_sharding(mesh)
    rl_dir = os.path.join(workdir, "grpo")
    ckpt = checkpoint.Checkpointer(rl_dir, keep=g.keep_checkpoints)
    questions = QuestionStream(task, config.task.seed)
    # A copy: the train state's buffers are donated to each update.
    ref = jax.tree.map(jnp.copy, (params, model_state)) if lc.beta > 0 else None
    restored = ckpt.restore_latest(abstract)
    if restored is None:
        state = fresh()
    else:
        state, extra, _ = restored
        if "data" not in extra:  # saved before GRPO ran in train_loop: its step counted updates
            state = state.replace(step=jnp.asarray(extra["grpo_step"], jnp.int32))
            extra = {"data": {"questions": extra["questions"]}}
        questions.set_position(extra["data"]["questions"])
    if loop_sh is not None:
        state = jax.device_put(state, loop_sh)
    samples_path = os.path.join(workdir, "samples.txt")

    def write_samples(n: int, ro) -> None:  # every samples_every steps, the first and the last
        if g.samples_every and (n % g.samples_every == 0 or n in (1, g.num_steps)):
            append_samples(samples_path, n, ro, g.samples_per_write)

    step = grpo_step.make_step(
        cfg,
        lc,
        tx,
        roller=Roller(config, cfg, tokenizer, task, sp),
        questions=questions,
        ref=ref,
        seed=config.seed,
        num_iterations=g.num_iterations,
        minibatch_size=g.minibatch_size,
        bias_rate=g.bias_update_rate,
        old_logprobs=g.old_logprobs,
        routing_replay=g.routing_replay,
        state_sh=state_sh,
        row_sh=row_sh,
        on_rollout=write_samples,
        off_policy_steps=g.off_policy_steps,
        num_steps=g.num_steps,
    )
    # The question stream's position after the rollouts trained on so far: with a rollout in
    # flight (off_policy_steps=1) the one before it, which a resumed run samples again.
    position = lambda: questions.position if not off_policy else step.position
    try:
        state, _ = loop.train_loop(
            state=state,
            step_fn=step,
            batches=itertools.count(int(state.step) + 1),  # the step number: its rollout key
            num_steps=g.num_steps,
            workdir=workdir,
            checkpointer=ckpt,
            checkpoint_every=g.checkpoint_every,
            data_state=lambda: {"questions": position()},
            progress_keys=("reward", "accuracy", "format", "response_length", "mismatch_max"),
            desc=config.get("name", "grpo"),
            on_step=on_step,
        )
    finally:
        if off_policy:
            step.close()
        ckpt.close()
    return state.as_train_state() if off_policy else state


class HeldOut:
    """The held-out evaluation of the base and of the policy (same questions, same sampling
    key) and the files it writes into the workdir."""

    def __init__(self, config, cfg: ModelConfig, tokenizer, task: Task, examples, workdir: str):
        self.config, self.cfg, self.tokenizer, self.task = config, cfg, tokenizer, task
        self.examples, self.workdir = examples, workdir
        self.sp = sampling.SamplingParams.from_config(config.eval.sampling)
        self.k = config.eval.num_samples

    def _evaluate(self, params, model_state):
        c = self.config
        return evaluate.evaluate_policy(
            self.cfg,
            params,
            model_state,
            self.tokenizer,
            self.task,
            self.examples,
            t=c.task,
            e=c.eval,
            sp=self.sp,
            key=jax.random.key(c.seed + 1),
        )

    def base(self, params, model_state, source: str) -> dict:
        """The base's metrics; saved in eval_base.json and reused on resume when they were
        made of the same model, task and evaluation settings."""
        path = os.path.join(self.workdir, "eval_base.json")
        c = self.config
        what = {"model": source, "task": c.task.to_dict(), "eval": c.eval.to_dict()}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("of") == what:
                return saved["metrics"]
        before, texts, scores, _ = self._evaluate(params, model_state)
        evaluate.write_completions(
            os.path.join(self.workdir, "eval_base.jsonl"), self.examples, texts, scores, self.k
        )
        with open(path, "w") as f:
            json.dump({"of": what, "metrics": before}, f, indent=2)
        return before

    def policy(self, params, model_state, step: int, before: dict) -> dict:
        """The policy's metrics; its answers in eval_samples.txt and eval_policy.jsonl, both
        evaluations as metrics at the last step (metrics.jsonl, TensorBoard) beside the
        training curves, the before/after table as TensorBoard text."""
        after, texts, scores, prompts = self._evaluate(params, model_state)
        folder, k = self.workdir, self.k
        evaluate.write_samples(
            os.path.join(folder, "eval_samples.txt"),
            self.examples,
            prompts,
            texts,
            scores,
            k,
            self.config.eval.num_printed,
        )
        evaluate.write_completions(
            os.path.join(folder, "eval_policy.jsonl"), self.examples, texts, scores, k
        )
        writer = loop.MetricWriter(folder)
        scalars = {
            f"{prefix}{key}": v
            for prefix, m in (("eval_base_", before), ("eval_", after))
            for key, v in m.items()
            if isinstance(v, int | float)
        }
        writer.write(step, scalars)
        writer.text("eval/before_after", before_after_table(before, after, k), step)
        writer.close()
        return after

    def header(self) -> str:
        return (
            f"\n{self.config.task.name}: {len(self.examples)} held-out questions x {self.k} "
            f"samples (T={self.sp.temperature}, top-p {self.sp.top_p})"
        )
