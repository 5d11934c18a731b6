"""Recipe 'distill_vs_rl': DeepSeek-R1's comparison (sec. 4.1, Table 6) in miniature.

The same small student, from the same pretrained base, is trained two ways:
  (a) distilled: SFT on the R1-Zero teacher's verified answers (the 'distill' recipe, reused);
  (b) RL directly: GRPO from its own base with the teacher's R1-Zero settings.
Both are evaluated on the same held-out questions. The compute each used is estimated in
FLOPs (6 x activated parameters per trained token, 2 x per forward-only or sampled token,
`models/counting.py`) and measured in wall time, and printed beside the results; the
teacher's own cost (its RL, its sampling) is listed separately: distillation inherits it.
"""

from __future__ import annotations

import json
import os

import ml_collections

from moe_rl import evaluate
from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models import counting
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import distill, r1_zero
from moe_rl.train import grpo, loop


def student_rl_config(config, workdir: str, tokenizer_dir: str) -> ml_collections.ConfigDict:
    """The R1-Zero config of the student: the teacher's task, sampling and eval; the student's
    model, its pretrained base and config.student_rl's GRPO and optimizer settings."""
    c = ml_collections.ConfigDict(config.teacher.to_dict())
    c.update(
        name="student_grpo",
        seed=config.seed,
        model=config.student.model,
        init_checkpoint=os.path.join(workdir, "student_base"),
        tokenizer=tokenizer_dir,
        eval=config.eval,
    )
    c.grpo.update(config.student_rl.grpo)
    c.optim = config.student_rl.optim
    return c


def prompt_tokens(task_config, tokenizer_dir: str, n: int = 64) -> int:
    """Mean prompt length in tokens over n training questions (the R1-Zero template is ~120)."""
    examples = task_from_config(task_config).examples("train", n, seed=task_config.seed)
    tokenizer = tokenizers.get_tokenizer(tokenizer_dir)
    _, ids = evaluate.prompts_for(
        tokenizer, examples, task_config.template, task_config.think_opened
    )
    return round(sum(map(len, ids)) / len(ids))


def estimate(cfg: ModelConfig, trained: float, forward: float, seq_len: int) -> float:
    """FLOPs of `trained` tokens through forward and backward and `forward` tokens through the
    forward pass only (a third of training's), at sequence length seq_len."""
    per_token = counting.flops_per_token(cfg, seq_len)  # training: forward + backward
    return trained * per_token + forward * per_token / 3


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.distill.mode != "sft":
        raise ValueError(
            f"config.distill.mode={config.distill.mode!r}; allowed here: 'sft' (R1's comparison "
            "is SFT distillation vs RL)"
        )
    # (b)'s settings are checked before (a) runs, not half an hour later.
    grpo.validate_grpo_config(student_rl_config(config, workdir, ""))
    distilled = distill.run(config, workdir)  # reused when it already ran in this workdir
    teacher_dir = distill.teacher_workdir(config, workdir)
    tokenizer_dir = grpo.base_tokenizer(config.teacher, teacher_dir)
    rl_config = student_rl_config(config, workdir, tokenizer_dir)
    prompt = prompt_tokens(config.teacher.task, tokenizer_dir)
    print("Training the same student with GRPO from its own base")
    rl = r1_zero.run(rl_config, os.path.join(workdir, "student_grpo"))

    student = ModelConfig.from_config(config.student.model)
    teacher = ModelConfig.from_config(config.teacher.model)
    s, g = config.student.sft.train, rl_config.grpo
    # (a) SFT: every position of every packed row goes forward and backward.
    sft_rows = [r for r in loop.read_metrics(os.path.join(workdir, "student_sft")) if "loss" in r]
    sft_tokens = s.num_steps * s.batch_size * s.seq_len
    sft_flops = estimate(student, sft_tokens, 0, s.seq_len)
    sft_seconds = sum(r.get("step_seconds", 0.0) for r in sft_rows)
    # The teacher's sampling: each prompt prefilled once per sample batch, then decoding.
    stats = distilled["data"]
    teacher_sampling = estimate(
        teacher, 0, stats["generated_tokens"] + stats["sampled"] * prompt, 256
    )
    # (b) GRPO: sampling (prompt + generated), the reference forward and the update over the
    # packed rows (prompt + G completions of max_new_tokens each).
    rl_rows = [r for r in loop.read_metrics(os.path.join(workdir, "student_grpo")) if "reward" in r]
    generated = sum(r["generated_tokens"] for r in rl_rows)
    row_tokens = (
        g.num_steps
        * g.num_questions
        * (prompt + g.num_generations * rl_config.sampling.max_new_tokens)
    )
    rl_flops = estimate(
        student,
        row_tokens * g.num_iterations,
        generated + g.num_steps * g.num_questions * prompt + (row_tokens if g.beta > 0 else 0),
        rl_config.sampling.max_new_tokens + prompt,
    )
    rl_seconds = rl["seconds"]["grpo"]

    a, b = distilled["results"]["student"], rl["after"]
    base = distilled["results"]["student base"]
    k = config.eval.num_samples
    table = "\n".join(
        [
            f"| student | pass@1 | maj@{k} | format | student compute | student wall time |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| base (pretrained) | {base['pass@1']:.3f} | {base[f'maj@{k}']:.3f} | "
            f"{base['format_rate']:.3f} | - | - |",
            f"| (a) distilled (SFT, {s.num_steps} steps) | {a['pass@1']:.3f} | "
            f"{a[f'maj@{k}']:.3f} | {a['format_rate']:.3f} | {sft_flops:.2e} FLOPs | "
            f"{sft_seconds / 60:.1f} min |",
            f"| (b) GRPO ({g.num_steps} steps) | {b['pass@1']:.3f} | {b[f'maj@{k}']:.3f} | "
            f"{b['format_rate']:.3f} | {rl_flops:.2e} FLOPs | {rl_seconds / 60:.1f} min |",
        ]
    )
    teacher_pass = distilled["results"]["teacher"]["pass@1"]
    summary = {
        "distilled": a,
        "grpo": b,
        "student_base": base,
        "teacher_pass@1": teacher_pass,
        "compute": {
            "distill_sft_flops": sft_flops,
            "distill_sft_seconds": sft_seconds,
            "teacher_sampling_flops": teacher_sampling,
            "teacher_sampling_seconds": stats.get("sampling_seconds"),
            "grpo_flops": rl_flops,
            "grpo_seconds": rl_seconds,
        },
        "table": table,
    }
    with open(os.path.join(workdir, "distill_vs_rl.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nThe same student ({counting.param_counts(student)['activated']:,} activated params)")
    print(table)
    print(
        f"Teacher pass@1 {teacher_pass:.3f}. Distillation also used the teacher: its R1-Zero "
        f"training and {teacher_sampling:.2e} FLOPs of sampling "
        f"({(stats.get('sampling_seconds') or 0) / 60:.1f} min) for {stats['kept']} kept answers."
    )
    return summary
