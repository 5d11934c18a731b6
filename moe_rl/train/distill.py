"""Distillation, step 1: a teacher's verified answers as an SFT dataset (DeepSeek-R1 sec. 2.3.3,
"rejection sampling": sample several answers per question, keep the correct, well-formatted ones).

`teacher_dataset` samples k answers per training question from a teacher with the KV-cached
sampler, verifies each with the task's rule-based checker and the strict think/answer format,
keeps the verified ones (deduplicated; optionally the shortest per question) and writes them as
JSONL rows {"prompt", "completion", "question", ...} that `lm.read_pairs` (the 'sft' recipe)
reads, with the statistics beside them. A second call with the same arguments reuses the files.
"""

from __future__ import annotations

import json
import os

import jax

from moe_rl import evaluate, rewards
from moe_rl.data.tasks import Example, Task
from moe_rl.train import distill_data


def verify(task: Task, examples: list[Example], texts: list[str], k: int, think_opened: bool):
    """(correct [Q][k], formatted [Q][k]) of question-major texts: the answer in the tags
    passes the task's verifier; the response has the strict R1 format."""
    correct, formatted = [], []
    for q, ex in enumerate(examples):
        rows = texts[q * k : (q + 1) * k]
        answers = [rewards.extract_answer(t) for t in rows]
        correct.append(
            [a is not None and rewards.score_answer(a, ex, task) == 1.0 for a in answers]
        )
        formatted.append([rewards.format_reward(t, think_opened) == 1.0 for t in rows])
    return correct, formatted


def teacher_dataset(
    path: str,
    cfg,
    params,
    model_state,
    tokenizer,
    task: Task,
    examples: list[Example],
    *,
    k: int,
    sp,
    template: str,
    think_opened: bool,
    batch_size: int,
    key: jax.Array,
    shortest_only: bool = False,
) -> tuple[list[dict], dict]:
    """(rows, stats) of the rejection-sampled dataset at `path` (JSONL), made now or reused.

    It is reused only when its stats record the same questions, k and sampling; otherwise it
    is made again (a changed teacher is the caller's to name in `path`).
    """
    what = {
        "questions": [ex.question for ex in examples],
        "k": k,
        "sampling": [sp.temperature, sp.top_k, sp.top_p, sp.max_new_tokens],
        "template": template,
        "shortest_only": shortest_only,
    }
    stats_file = distill_data.stats_path(path)
    if os.path.exists(path) and os.path.exists(stats_file):
        with open(stats_file) as f:
            if json.load(f).get("of") == what:
                with open(stats_file) as g:
                    return distill_data.read_jsonl(path), json.load(g)
    prompts, ids = evaluate.prompts_for(tokenizer, examples, template, think_opened)
    texts, lengths, _, seconds = evaluate.sample_answers(
        cfg, params, model_state, tokenizer, ids, k, sp, batch_size, key
    )
    correct, formatted = verify(task, examples, texts, k, think_opened)
    grouped = lambda xs: [list(xs[q * k : (q + 1) * k]) for q in range(len(examples))]
    rows, stats = distill_data.select_answers(
        [ex.question for ex in examples],
        grouped(texts),
        correct,
        formatted,
        shortest_only=shortest_only,
        num_tokens=grouped([int(n) for n in lengths]),
    )
    prompt_of = dict(zip([ex.question for ex in examples], prompts, strict=True))
    answer_of = {ex.question: ex.answer for ex in examples}
    rows = [
        {"prompt": prompt_of[r["question"]], "reference": answer_of[r["question"]], **r}
        for r in rows
    ]
    stats.update(of=what, sampling_seconds=seconds, generated_tokens=int(lengths.sum()))
    distill_data.write_jsonl(path, rows, stats)
    return rows, stats
