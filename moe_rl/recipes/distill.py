"""Recipe 'distill' (DeepSeek-R1 sec. 2.4): a teacher (an R1-Zero policy, trained here unless
`teacher_workdir` names one, or a Hugging Face model) -> its verified answers to training
questions (rejection sampling, `train.distill.teacher_dataset`) -> a smaller student (pretrained
here, or `student.init_checkpoint`) trained on them: SFT (DeepSeek-R1's), token-level KD or GKD
(`distill.mode`) -> teacher, student base and student on the same held-out questions.

    python -m moe_rl.main --config=experiments/distill.py [--seeds=0-2]
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from moe_rl import evaluate, hf, plots, sampling
from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models import counting
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import pretrain, r1_zero
from moe_rl.train import distill_data, distill_loss, gkd, grpo, lm, loop
from moe_rl.train.distill import same_vocabulary, split_rows, teacher_dataset, with_hf_models


def _model_row(name, cfg, metrics) -> str:
    counts = counting.param_counts(cfg)
    return (
        f"| {name} | {counts['total']:,} | {counts['activated']:,} | "
        f"{metrics['tokens_per_s']:,.0f} | {metrics['pass@1']:.3f} | "
        f"{metrics[[k for k in metrics if k.startswith('maj@')][0]]:.3f} | "
        f"{metrics['format_rate']:.3f} |"
    )


def teacher_workdir(config, workdir: str) -> str:
    """config.teacher_workdir (a finished R1-Zero run or a Hugging Face model folder), or
    <workdir>/teacher where experiments/r1_zero.py's recipe runs first (reused when complete)."""
    if hf.is_hf_folder(config.teacher_workdir):
        return config.teacher_workdir
    if config.teacher_workdir:
        if not os.path.isdir(os.path.join(config.teacher_workdir, "grpo", "checkpoints")):
            raise ValueError(
                f"config.teacher_workdir={config.teacher_workdir!r} holds no GRPO checkpoint "
                "(grpo/checkpoints); run experiments/r1_zero.py into it first, or leave it '' "
                "to run it here"
            )
        return config.teacher_workdir
    folder = os.path.join(workdir, "teacher")
    loop.run_stage(
        os.path.join(folder, "grpo"),
        config.teacher.grpo.num_steps,
        lambda: r1_zero.run(config.teacher, folder),
        f"Training the teacher with the R1-Zero recipe into {folder}",
    )
    return folder


def seed_row(result: dict) -> dict[str, float]:
    """--seeds (moe_rl/sweep.py): held-out pass@1 of the teacher, the student base and the
    distilled student, the student's share of the teacher's, and the answers kept."""
    r = result["results"]
    return {
        "teacher pass@1": r["teacher"]["pass@1"],
        "student base pass@1": r["student base"]["pass@1"],
        "student pass@1": r["student"]["pass@1"],
        "share": result["student_share_of_teacher_pass@1"],
        "answers kept": result["data"]["kept"],
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Teacher (an R1-Zero policy or a Hugging Face model) -> rejection-sampled answers -> SFT
    of a student (pretrained here, or config.student.init_checkpoint: a moe_rl workdir or a
    Hugging Face model); prints the teacher-vs-student table."""
    config = with_hf_models(config)
    d, t = config.distill, config.teacher.task
    dc = distill_loss.DistillLossConfig.from_config(d)
    for key, ok, allowed in (
        ("num_questions", d.num_questions >= 1, ">= 1"),
        ("samples_per_question", d.samples_per_question >= 1, ">= 1"),
        ("validation_fraction", 0 <= d.validation_fraction < 1, "in [0, 1)"),
        ("lmbda", 0 <= d.lmbda <= 1, "in [0, 1] (gkd: the fraction of student-written batches)"),
    ):
        if not ok:
            raise ValueError(f"config.distill.{key}={d[key]!r}; allowed: {allowed}")
    # Sampling blocks fail here, before the teacher and the student run, not when first used.
    sp = sampling.SamplingParams.from_config(d.sampling)
    student_sp = sampling.SamplingParams.from_config(d.student_sampling)
    teacher_cfg = ModelConfig.from_config(config.teacher.model)
    student_cfg = ModelConfig.from_config(config.student.model)
    evaluate.validate_eval_block(config.eval, "eval")
    if not config.student.get("init_checkpoint", ""):
        lm.validate_train_config(config.student.pretrain, student_cfg, "student.pretrain.")
    lm.validate_train_config(config.student.sft, student_cfg, "student.sft.")
    if d.mode != "sft" and student_cfg.vocab_size != teacher_cfg.vocab_size:
        raise ValueError(
            f"config.distill.mode={d.mode!r} compares token distributions: it needs one tokenizer "
            f"and config.student.model.vocab_size ({student_cfg.vocab_size}) == "
            f"config.teacher.model.vocab_size ({teacher_cfg.vocab_size})"
        )
    os.makedirs(workdir, exist_ok=True)
    teacher_dir = teacher_workdir(config, workdir)
    teacher_ckpt = (
        teacher_dir if hf.is_hf_folder(teacher_dir) else os.path.join(teacher_dir, "grpo")
    )
    tokenizer_dir = grpo.base_tokenizer(config.teacher, teacher_dir)
    tokenizer = tokenizers.get_tokenizer(tokenizer_dir)
    # The student reads the teacher's answers with its own tokenizer: a Hugging Face student
    # brings one, a student trained here uses the teacher's.
    student_init = config.student.get("init_checkpoint", "")
    student_tokenizer_dir = student_init if hf.is_hf_folder(student_init) else tokenizer_dir
    student_tokenizer = tokenizers.get_tokenizer(student_tokenizer_dir)
    evaluate.check_tokenizer(student_tokenizer, student_cfg)
    if d.mode != "sft" and not same_vocabulary(tokenizer, student_tokenizer):
        raise ValueError(
            f"config.distill.mode={d.mode!r} compares token distributions: the student "
            f"config.student.init_checkpoint={student_init!r} has another vocabulary than the "
            "teacher; use mode='sft' (text), or a student with the teacher's tokenizer"
        )
    task = task_from_config(t)
    load = ml_collections.ConfigDict(dict(checkpoint=teacher_ckpt, seed=config.seed))
    teacher_params, teacher_state, teacher_source = evaluate.load_model(load, teacher_cfg)

    # 1. The teacher's verified answers to training questions.
    questions = task.examples("train", d.num_questions, seed=d.question_seed)
    rows, stats = teacher_dataset(
        os.path.join(workdir, "data", "teacher.jsonl"),
        teacher_cfg,
        teacher_params,
        teacher_state,
        tokenizer,
        task,
        questions,
        k=d.samples_per_question,
        sp=sp,
        template=t.template,
        think_opened=t.think_opened,
        batch_size=config.eval.batch_size,
        key=jax.random.key(config.seed),
        shortest_only=d.shortest_only,
        teacher=teacher_source,
        rejection=d.rejection,
    )
    if not rows:
        raise ValueError(
            "the teacher answered no training question correctly and in format: nothing to "
            f"distil (stats: {distill_data.stats_path(os.path.join(workdir, 'data'))})"
        )
    train_rows, val_rows = split_rows(rows, d.validation_fraction)
    paths = {}
    for split, part in (("train", train_rows), ("validation", val_rows or train_rows[:1])):
        paths[split] = os.path.join(workdir, "data", f"sft_{split}.jsonl")
        distill_data.write_jsonl(paths[split], part, {"rows": len(part)})

    # 2. The student: config.student.init_checkpoint, or pretrained here on the same corpus with
    # the teacher's tokenizer; then SFT.
    student_base = student_init or os.path.join(workdir, "student_base")
    if not student_init:
        pre = ml_collections.ConfigDict(config.student.pretrain.to_dict())
        pre.update(model=config.student.model, seed=config.seed, init_checkpoint="")
        pre.data.tokenizer = tokenizer_dir
        n = pre.train.num_steps
        what = f"Pretraining the student into {student_base} ({n} steps)"
        loop.run_stage(student_base, n, lambda: pretrain.run(pre, student_base), what)
    sft = ml_collections.ConfigDict(config.student.sft.to_dict())
    sft.update(recipe="sft", model=config.student.model, seed=config.seed)
    sft.init_checkpoint = student_base
    sft.data.update(tokenizer=student_tokenizer_dir, sft_train=paths["train"])
    sft.data.sft_validation = paths["validation"]
    # One folder per mode: a finished student of another mode must not be resumed as this one.
    student_dir = os.path.join(workdir, f"student_{d.mode}")
    print(f"{d.mode} of the student on {len(train_rows)} teacher answers into {student_dir}")
    teacher = (teacher_cfg, teacher_params, teacher_state)
    if d.mode == "gkd":
        gkd.run_gkd(
            sft,
            student_dir,
            student_cfg,
            teacher,
            student_tokenizer,
            train_rows,
            val_rows or train_rows[:1],
            dc,
            d.lmbda,
            student_sp,
        )
    else:
        pretrain.run(
            sft, student_dir, loss_fn=gkd.kd_loss_fn(*teacher, dc) if d.mode != "sft" else None
        )

    # 3. Both on the same held-out questions.
    test = task.examples("test", config.eval.num_questions, seed=t.seed)
    eval_sp = sampling.SamplingParams.from_config(config.eval.sampling)
    results = {}
    for name, cfg, folder, tok in (
        ("teacher", teacher_cfg, teacher_ckpt, tokenizer),
        ("student base", student_cfg, student_base, student_tokenizer),
        ("student", student_cfg, student_dir, student_tokenizer),
    ):
        load.checkpoint = folder
        params, state, _ = evaluate.load_model(load, cfg)
        results[name] = evaluate.evaluate_policy(
            cfg,
            params,
            state,
            tok,
            task,
            test,
            t=t,
            e=config.eval,
            sp=eval_sp,
            key=jax.random.key(config.seed + 1),
        )[0]
    header = (
        f"| model | params | activated | sampling tokens/s | pass@1 | "
        f"maj@{config.eval.num_samples} | format |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    table = "\n".join(
        [header]
        + [
            _model_row(n, teacher_cfg if n == "teacher" else student_cfg, m)
            for n, m in results.items()
        ]
    )
    share = results["student"]["pass@1"] / max(results["teacher"]["pass@1"], 1e-9)
    summary = {
        "teacher": teacher_source,
        "data": {k: v for k, v in stats.items() if k != "of"},
        "results": results,
        "student_share_of_teacher_pass@1": share,
        "params": {
            name: counting.param_counts(teacher_cfg if name == "teacher" else student_cfg)
            for name in results
        },
        "table": table,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    summary["plot"] = plots.plot_distill(summary, os.path.join(workdir, "distill.png"))
    print(
        f"\nTeacher data: {stats['kept']} answers kept of {stats['sampled']} sampled "
        f"(acceptance {stats['acceptance_rate']:.2f}) for {stats['questions']} questions"
    )
    print(f"{t.name}: {len(test)} held-out questions x {config.eval.num_samples} samples")
    print(table)
    print(f"student pass@1 = {share:.0%} of the teacher's")
    return summary
