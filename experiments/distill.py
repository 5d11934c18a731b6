"""Distillation as DeepSeek-R1 did it: an R1-Zero MoE teacher answers many training questions,
its verified answers are kept (rejection sampling) and a smaller dense student, pretrained on the
same corpus with the teacher's tokenizer, is fine-tuned on them (SFT only).

Command:  python -m moe_rl.main --config=experiments/distill.py
          own teacher: --config.teacher_workdir=runs/r1_zero (a finished experiments/r1_zero.py run)
Runtime:  the teacher's R1-Zero run (reused with teacher_workdir, else run here first) + 6.6-8
          min on a 2-core CPU: teacher sampling, student pretraining, SFT (2400 steps), three
          evaluations.
Result:   measured over seeds 0-2, each with its own R1-Zero teacher (--seeds=0-2
          --config.teacher_workdir=runs/r1_zero/seed_{seed}; docs/results/distill): teacher
          pass@1 0.959 / 0.936 / 0.639, student base 0.004-0.008, distilled student 0.998 /
          0.977 / 0.867 (104% / 104% / 136% of the teacher's) with 3.2x fewer activated
          parameters. Printed as a table of teacher vs student base vs student (parameters,
          activated parameters, sampling tokens/s, held-out pass@1, maj@4, format rate);
          <workdir>/summary.json, data/teacher.jsonl (the kept answers) with
          data/teacher.stats.json.
Modes:    --config.distill.mode=sft (default, R1's) | logit_kd (the teacher's token
          distributions on the same answers) | gkd (on-policy: half the batches written by the
          student itself, generalized JSD to the teacher); each trains into student_<mode>/ and
          reuses the teacher, its answers and the student base.
"""

from ml_collections import ConfigDict

from moe_rl.train import configs


def get_config() -> ConfigDict:
    # The teacher's whole R1-Zero config, the student and the distillation blocks, commented:
    # moe_rl/train/configs.py distill().
    return configs.distill()
