"""Sampling k answers per test question and scoring them as DeepSeek-R1 reports: the library
of the 'eval' recipe (moe_rl/recipes/eval.py) and of every held-out evaluation.

Metrics (DeepSeek-R1 sec. 3: k samples per question at temperature 0.6, top-p 0.95):
pass@1 averaged over the k samples, unbiased pass@k' for k' = 1, 2, 4, ... <= k (Chen et al.
2021), maj@k (self-consistency), format rate, truncation rate (no EOS within the budget) and
mean response length in tokens, overall and split by correct / incorrect. Printed as a table,
written to <workdir>/eval.json, with a sample of answers in <workdir>/samples.txt.
"""

from __future__ import annotations

import json
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from moe_rl import eval_metrics, loading, rewards, sampling
from moe_rl.data.tasks import TEMPLATES, Example, Task, format_prompt
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig


def init_model(cfg: ModelConfig, seed: int) -> dict:
    """{'params', 'model_state'} of a freshly initialised model."""
    params, model_state = transformer.init(cfg, jax.random.key(seed))
    return {"params": params, "model_state": model_state}


def load_model(config: ml_collections.ConfigDict, cfg: ModelConfig):
    """(params, model_state, description): the newest checkpoint of `config.checkpoint`, or a
    freshly initialised model (seed `config.seed`) when it is ''."""
    init = jax.jit(lambda: init_model(cfg, config.seed))
    if not config.checkpoint:
        logging.warning("config.checkpoint is empty: evaluating a freshly initialised model")
        model = init()
        return model["params"], model["model_state"], "fresh init"
    return loading.load_model(config.checkpoint, cfg, key="config.checkpoint")


def validate_eval_config(config: ml_collections.ConfigDict) -> None:
    """Checks values before anything compiles; errors name the key and what is allowed."""
    e, t = config.eval, config.task
    if t.template not in TEMPLATES:
        raise ValueError(f"config.task.template={t.template!r}; allowed: {TEMPLATES}")
    if t.split not in ("train", "test"):
        raise ValueError(f"config.task.split={t.split!r}; allowed: 'train', 'test'")
    if t.num_questions < 1:
        raise ValueError(f"config.task.num_questions={t.num_questions} must be >= 1")
    validate_eval_block(e, "eval")
    sampling.SamplingParams.from_config(config.sampling)


def validate_eval_block(e: ml_collections.ConfigDict, key: str) -> None:
    """An evaluation block (the eval recipe's, or the `eval` block of R1-Zero and distillation
    with its own num_questions and sampling); errors name `key`."""
    counts = ["num_samples", "batch_size"] + (["num_questions"] if "num_questions" in e else [])
    for name in counts:
        if e[name] < 1:
            raise ValueError(f"config.{key}.{name}={e[name]} must be >= 1")
    if e.extract not in EXTRACTORS:
        raise ValueError(f"config.{key}.extract={e.extract!r}; allowed: {EXTRACTORS}")
    if "sampling" in e:
        sampling.SamplingParams.from_config(e.sampling, f"{key}.sampling")


EXTRACTORS = ("tags", "first_line")


def extract(text: str, how: str = "tags") -> str | None:
    """The answer of a response: 'tags' = the last <answer>...</answer> or \\boxed{} (R1);
    'first_line' = the response's first line without a final period (bare answers of a base
    model prompted with the plain template)."""
    if how == "tags":
        return rewards.extract_answer(text)
    line = text.strip().split("\n", 1)[0].strip().removesuffix(".").strip()
    return line or None


def score_question(
    task: Task,
    example: Example,
    texts: list[str],
    lengths,
    truncated,
    *,
    think_opened: bool,
    math: bool,
    extractor: str = "tags",
) -> dict:
    """Per-question scores of its k responses."""
    answers = [extract(t, extractor) for t in texts]
    accuracy = [0.0 if a is None else rewards.score_answer(a, example, task, math) for a in answers]
    voted = eval_metrics.majority_vote(answers)
    maj = 0.0 if voted is None else rewards.score_answer(voted, example, task, math)
    return {
        "accuracy": np.array(accuracy),
        "format": np.array([rewards.format_reward(t, think_opened) for t in texts]),
        "lengths": np.asarray(lengths),
        "truncated": np.asarray(truncated),
        "maj": maj,
    }


def summarize(scores: list[dict], k: int) -> dict:
    """Aggregate metrics over questions (see the module docstring)."""
    acc = np.stack([s["accuracy"] for s in scores])  # [Q, k]
    lengths = np.stack([s["lengths"] for s in scores]).astype(np.float64)
    correct = acc >= 1.0
    out = {"questions": len(scores), "samples_per_question": k, "pass@1": float(acc.mean())}
    kk = 2
    while kk <= k:
        out[f"pass@{kk}"] = float(eval_metrics.pass_at_k(k, correct.sum(1), kk).mean())
        kk *= 2
    mean_or_none = lambda a: float(a.mean()) if a.size else None
    out.update(
        {
            f"maj@{k}": float(np.mean([s["maj"] for s in scores])),
            "format_rate": float(np.stack([s["format"] for s in scores]).mean()),
            "truncated_rate": float(np.stack([s["truncated"] for s in scores]).mean()),
            "mean_length": float(lengths.mean()),
            "mean_length_correct": mean_or_none(lengths[correct]),
            "mean_length_incorrect": mean_or_none(lengths[~correct]),
        }
    )
    return out


def format_table(metrics: dict) -> str:
    rows = ["| metric | value |", "| --- | ---: |"]
    for key, value in metrics.items():
        if isinstance(value, float):
            value = (
                f"{value:.3f}"
                if key.startswith(("pass", "maj", "format", "trunc"))
                else (f"{value:.1f}")
            )
        rows.append(f"| {key} | {'-' if value is None else value} |")
    return "\n".join(rows)


def prompts_for(tokenizer, examples: list[Example], template: str, think_opened: bool):
    """(prompt texts, their token ids) of the examples under a template."""
    prompts = [
        format_prompt(template, ex.question, tokenizer.chat_template, think_opened)
        for ex in examples
    ]
    bos = tokenizer.bos_id is not None
    return prompts, [tokenizer.encode(p, add_bos=bos) for p in prompts]


def sample_answers(cfg, params, model_state, tokenizer, ids, k, sp, batch_size, key):
    """k decoded answers per prompt, question-major: (texts, lengths, truncated, seconds)."""
    jobs = [q for q in range(len(ids)) for _ in range(k)]
    texts: list[str] = [""] * len(jobs)
    lengths = np.zeros(len(jobs), np.int32)
    truncated = np.zeros(len(jobs), bool)
    start = time.perf_counter()
    for b in tqdm.trange(0, len(jobs), batch_size, desc="sampling", unit="batch", leave=False):
        batch_ids = [ids[q] for q in jobs[b : b + batch_size]]
        size = len(batch_ids)
        batch_ids += [batch_ids[0]] * (batch_size - size)  # keep one compiled shape
        out = sampling.generate(
            cfg,
            params,
            model_state,
            batch_ids,
            jax.random.fold_in(key, b),
            sp,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
        )
        tokens, n = jax.device_get((out.tokens, out.lengths))
        for i in range(size):
            texts[b + i] = tokenizer.decode(tokens[i, : n[i]])
            lengths[b + i] = n[i]
            truncated[b + i] = n[i] == sp.max_new_tokens and tokens[i, n[i] - 1] != tokenizer.eos_id
    return texts, lengths, truncated, time.perf_counter() - start


def evaluate_policy(
    cfg, params, model_state, tokenizer, task, examples, *, t, e, sp, key
) -> tuple[dict, list[str], list[dict], list[str]]:
    """Samples `e.num_samples` answers per example and scores them: (metrics, texts, per-question
    scores, prompts). `t` is a config.task block (template, think_opened), `e` a config.eval
    block (num_samples, batch_size, use_math_verify, extract)."""
    prompts, ids = prompts_for(tokenizer, examples, t.template, t.think_opened)
    k = e.num_samples
    texts, lengths, truncated, seconds = sample_answers(
        cfg, params, model_state, tokenizer, ids, k, sp, e.batch_size, key
    )
    scores = [
        score_question(
            task,
            ex,
            texts[q * k : (q + 1) * k],
            lengths[q * k : (q + 1) * k],
            truncated[q * k : (q + 1) * k],
            think_opened=t.think_opened,
            math=e.use_math_verify,
            extractor=e.extract,
        )
        for q, ex in enumerate(examples)
    ]
    metrics = summarize(scores, k)
    generated = int(lengths.sum())
    metrics.update(generated_tokens=generated, seconds=seconds, tokens_per_s=generated / seconds)
    return metrics, texts, scores, prompts


def write_samples(path, examples, prompts, texts, scores, k: int, num_printed: int) -> None:
    with open(path, "w") as f:
        for q, ex in enumerate(examples[:num_printed]):
            s = scores[q]
            for j in range(k):
                f.write(
                    f"=== question {q} sample {j} | accuracy {s['accuracy'][j]:.2f} "
                    f"format {s['format'][j]:.0f} tokens {s['lengths'][j]}\n"
                    f"PROMPT: {prompts[q]}\nREFERENCE: {ex.answer}\n"
                    f"RESPONSE: {texts[q * k + j]}\n\n"
                )


def write_completions(path, examples, texts, scores, k: int) -> None:
    """Every sampled answer as a JSON line (question, reference, response, accuracy, format,
    tokens), for analyses of what a policy writes (e.g. docs/results/r1_zero_countdown)."""
    with open(path, "w") as f:
        for q, ex in enumerate(examples):
            s = scores[q]
            for j in range(k):
                line = {
                    "question": ex.question,
                    "reference": ex.answer,
                    "response": texts[q * k + j],
                    "accuracy": float(s["accuracy"][j]),
                    "format": float(s["format"][j]),
                    "tokens": int(s["lengths"][j]),
                }
                f.write(json.dumps(line) + "\n")


def check_tokenizer(tokenizer, cfg: ModelConfig) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"config.tokenizer has {tokenizer.vocab_size} tokens > "
            f"model.vocab_size={cfg.vocab_size}"
        )
