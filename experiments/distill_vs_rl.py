"""DeepSeek-R1's "distillation vs reinforcement learning" (sec. 4.1) in miniature: the same small
dense student, from the same pretrained base, (a) distilled from the R1-Zero MoE teacher by SFT
on its verified answers, (b) trained with GRPO directly; both on the same held-out questions,
with the compute each used.

Command:  python -m moe_rl.main --config=experiments/distill_vs_rl.py
          reuse a distillation: --workdir=runs/distill (its teacher, data, student base and
          distilled student are reused; only the student's GRPO runs)
Runtime:  experiments/distill.py's run (reused when it is in the workdir), then the student's
          GRPO; the README's "Distillation vs RL" section has the measured times.
Result:   a table: the student base, (a) distilled and (b) GRPO-trained: held-out pass@1,
          maj@4, format rate, student-side compute (estimated FLOPs) and wall time; the
          teacher's own cost listed beside it; <workdir>/distill_vs_rl.json.
"""

from ml_collections import ConfigDict

from moe_rl.train import configs


def get_config() -> ConfigDict:
    config = configs.distill()
    config.name = "distill"  # the same workdir as experiments/distill.py: its stages are reused
    config.recipe = "distill_vs_rl"
    # (b): the teacher's R1-Zero GRPO settings on the student, 300 steps: about the FLOPs of
    # the distillation SFT (1200 steps), printed beside the results.
    config.student_rl = ConfigDict(
        dict(
            grpo=dict(num_steps=300),
            # The student's SFT learning rate: a 3x smaller model takes larger steps.
            optim=dict(config.teacher.optim.to_dict(), learning_rate=1e-3),
        )
    )
    return config
