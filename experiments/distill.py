"""Distillation as DeepSeek-R1 did it: an R1-Zero MoE teacher answers many training questions,
its verified answers are kept (rejection sampling) and a smaller dense student, pretrained on the
same corpus with the teacher's tokenizer, is fine-tuned on them (SFT only).

Command:  python -m moe_rl.main --config=experiments/distill.py
          own teacher: --config.teacher_workdir=runs/r1_zero (a finished experiments/r1_zero.py run)
Runtime:  the teacher's R1-Zero run (reused with teacher_workdir, else run here first) + 9-10
          min on a 2-core CPU: teacher sampling, student pretraining, SFT, three evaluations.
Result:   measured over seeds 0-2, each with its own R1-Zero teacher (--seeds=0-2
          --config.teacher_workdir=runs/r1_zero/seed_{seed}; docs/results/distill): teacher
          pass@1 0.836 / 0.301 / 0.984, student base 0.006-0.008, distilled student 0.803 /
          0.434 / 0.830 (96% / 144% / 84% of the teacher's) with 3.2x fewer activated
          parameters. Printed as a table of teacher vs student base vs student (parameters,
          activated parameters, sampling tokens/s, held-out pass@1, maj@4, format rate);
          <workdir>/summary.json, data/teacher.jsonl (the kept answers) with
          data/teacher.stats.json.
Modes:    --config.distill.mode=sft (default, R1's) | logit_kd (the teacher's token
          distributions on the same answers) | gkd (on-policy: half the batches written by the
          student itself, generalized JSD to the teacher); each trains into student_<mode>/ and
          reuses the teacher, its answers and the student base.
"""

import os
import runpy

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import configs

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ConfigDict:
    # The teacher's whole R1-Zero config: used to run it when teacher_workdir is '', and for its
    # model, task and tokenizer in any case.
    teacher = runpy.run_path(os.path.join(HERE, "r1_zero.py"))["get_config"]()
    teacher.name = "distill_teacher"
    # ~3x fewer activated parameters than the teacher's 160k (6x fewer in total), tied
    # embeddings: the same vocabulary (the teacher's BPE) on a 32-wide, 3-layer dense model.
    student = preset(
        "tiny_dense",
        vocab_size=teacher.model.vocab_size,
        hidden_size=32,
        intermediate_size=96,
        head_dim=8,
        tie_word_embeddings=True,
    )
    return ConfigDict(
        dict(
            name="distill",
            recipe="distill",
            seed=0,
            # A finished experiments/r1_zero.py workdir or a Hugging Face model folder (its
            # config.json, weights and tokenizer); '' = run the R1-Zero recipe here.
            teacher_workdir="",
            teacher=teacher,
            student=dict(
                # A pretrained student: a moe_rl workdir (its newest checkpoint; the model block
                # below must match it) or a Hugging Face model folder (its architecture replaces
                # the model block, its tokenizer reads the teacher's answers); '' = pretrain it.
                init_checkpoint="",
                model=student,
                # Pretraining like the teacher's base (same corpus mix, the teacher's tokenizer).
                pretrain=dict(
                    recipe="pretrain",
                    data=configs.data(mix="r1"),
                    train=configs.train(seq_len=256, batch_size=8, num_steps=2400),
                    optim=configs.optim(),
                ),
                sft=dict(
                    data=configs.data(),
                    # ~9 epochs of the ~1100 kept answers: 300 steps reach pass@1 0.12,
                    # 1200 reach 0.80 (measured; README "Distillation").
                    train=configs.train(seq_len=256, batch_size=8, num_steps=1200),
                    optim=configs.optim(learning_rate=1e-3, warmup_steps=20),
                ),
            ),
            distill=dict(
                # sft: SFT on the teacher's kept answers (R1) | logit_kd: + the teacher's logits
                # (forward KL at `temperature`) | gkd: on-policy, generalized JSD (Agarwal 2023)
                mode="sft",
                temperature=1.0,  # logit_kd, gkd: softmax temperature of both models
                ce_weight=0.0,  # logit_kd, gkd: weight of the hard-label cross-entropy term
                beta=0.5,  # gkd: 0 = forward KL, 1 = reverse KL, between = generalized JSD
                lmbda=0.5,  # gkd: fraction of batches whose completions the student samples
                # gkd: the student's sampling of its own completions
                student_sampling=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=80),
                num_questions=1024,  # training questions the teacher answers
                question_seed=1,
                samples_per_question=4,
                shortest_only=False,  # keep only the shortest verified answer per question
                # True: keep only verified answers (R1's rejection sampling); False: every
                # sample (sequence-level KD, Kim & Rush 2016; a pipeline check with a weak teacher)
                rejection=True,
                validation_fraction=0.05,  # questions held out of SFT for its validation loss
                sampling=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=80),
            ),
            eval=dict(
                num_questions=128,
                num_samples=4,
                batch_size=64,
                use_math_verify=False,
                extract="tags",
                num_printed=8,
                sampling=dict(temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=80),
            ),
        )
    )
