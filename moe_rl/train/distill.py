"""Distillation, step 1: a teacher's verified answers as an SFT dataset (DeepSeek-R1 sec. 2.3.3,
"rejection sampling": sample several answers per question, keep the correct, well-formatted ones).

`teacher_dataset` samples k answers per training question from a teacher with the KV-cached
sampler, verifies each with the task's rule-based checker and the strict think/answer format,
keeps the verified ones (deduplicated; optionally the shortest per question) and writes them as
JSONL rows {"prompt", "completion", "question", ...} that `lm.read_pairs` (the 'sft' recipe)
reads, with the statistics beside them. A second call with the same arguments reuses the files.
The recipe that uses them: moe_rl/recipes/distill.py.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from moe_rl import evaluate, hf
from moe_rl.data.tasks import Example, Task
from moe_rl.train import distill_data


def verify(task: Task, examples: list[Example], texts: list[str], k: int, think_opened: bool):
    """(correct [Q][k], formatted [Q][k]) of question-major texts, with the evaluation's verdicts
    (`evaluate.score_question`): the answer in the tags passes the task's verifier; the
    response has the strict R1 format."""
    correct, formatted = [], []
    for q, ex in enumerate(examples):
        rows = texts[q * k : (q + 1) * k]
        none = np.zeros(len(rows))  # lengths and truncation: not needed for the verdicts
        s = evaluate.score_question(
            task, ex, rows, none, none, think_opened=think_opened, math=False
        )
        correct.append([bool(a == 1.0) for a in s["accuracy"]])
        formatted.append([bool(f == 1.0) for f in s["format"]])
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
    teacher: str = "",
    rejection: bool = True,
) -> tuple[list[dict], dict]:
    """(rows, stats) of the rejection-sampled dataset at `path` (JSONL), made now or reused.

    `rejection=False` keeps every sample, verified or not (sequence-level KD, Kim & Rush 2016);
    stats['verified'] then still counts the correct, well-formatted ones.

    It is reused only when its stats record the same teacher (a description such as its
    checkpoint path and step), questions, k and sampling; otherwise it is made again.
    """
    what = {
        "questions": [ex.question for ex in examples],
        "k": k,
        "sampling": [sp.temperature, sp.top_k, sp.top_p, sp.max_new_tokens],
        "template": template,
        "shortest_only": shortest_only,
        "teacher": teacher,
        "rejection": rejection,
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
    verified = sum(
        c and f
        for cq, fq in zip(correct, formatted, strict=True)
        for c, f in zip(cq, fq, strict=True)
    )
    if not rejection:
        correct = formatted = [[True] * k for _ in examples]
    grouped = lambda xs: [list(xs[q * k : (q + 1) * k]) for q in range(len(examples))]
    rows, stats = distill_data.select_answers(
        [ex.question for ex in examples],
        grouped(texts),
        correct,
        formatted,
        shortest_only=shortest_only,
        num_tokens=grouped([int(n) for n in lengths]),
    )
    stats["verified"] = verified
    prompt_of = dict(zip([ex.question for ex in examples], prompts, strict=True))
    answer_of = {ex.question: ex.answer for ex in examples}
    rows = [
        {"prompt": prompt_of[r["question"]], "reference": answer_of[r["question"]], **r}
        for r in rows
    ]
    stats.update(of=what, sampling_seconds=seconds, generated_tokens=int(lengths.sum()))
    distill_data.write_jsonl(path, rows, stats)
    return rows, stats


# ----------------------------------------------------------------------------------------------
# Recipe 'distill' (mode 'sft', DeepSeek-R1's): teacher answers -> SFT of a smaller student.


def split_rows(rows: list[dict], validation_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows, split by question so that no question is in both."""
    questions = sorted({r["question"] for r in rows})
    n_val = max(1, round(len(questions) * validation_fraction)) if len(questions) > 1 else 0
    held = set(questions[:: max(1, len(questions) // max(n_val, 1))][:n_val])
    return [r for r in rows if r["question"] not in held], [
        r for r in rows if r["question"] in held
    ]


def with_hf_models(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's and the student's model blocks taken from their Hugging Face folders when
    config.teacher_workdir / config.student.init_checkpoint name one (run-time choices kept)."""
    teacher, student = config.teacher_workdir, config.student.get("init_checkpoint", "")
    if not (hf.is_hf_folder(teacher) or hf.is_hf_folder(student)):
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    if hf.is_hf_folder(teacher):
        config.teacher.model = hf.model_block(teacher, config.teacher.model)
        config.teacher.init_checkpoint = teacher  # its tokenizer is the teacher's ('base')
    if hf.is_hf_folder(student):
        config.student.model = hf.model_block(student, config.student.model)
    return config


def same_vocabulary(a, b) -> bool:
    """Two tokenizers map every token to the same id (logit-level distillation needs it)."""
    vocab = lambda tok: tok._tok.get_vocab() if hasattr(tok, "_tok") else type(tok).__name__
    return vocab(a) == vocab(b)
