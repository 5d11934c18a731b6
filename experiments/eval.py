"""Evaluate a model on a task split as DeepSeek-R1 does: k samples per question at
temperature 0.6, top-p 0.95; pass@1, pass@k, maj@k, format rate, response lengths.

Command:  python -m moe_rl.main --config=experiments/eval.py --config.task.name=rg:chain_sum
          (a trained model: --config.checkpoint=runs/pretrain_moe; any task: arithmetic,
          countdown, rg:<reasoning-gym dataset>, tfds:math_dataset/<module>)
Runtime:  about 1 minute on a 2-core CPU (64 questions x 4 samples x up to 128 tokens).
Result:   a table printed and written to runs/eval/eval.json, answers in runs/eval/samples.txt.
          A freshly initialised model scores 0 everywhere (it writes random bytes);
          runs/pretrain_moe after its 300 steps writes arithmetic prose but rarely the right
          sum: pass@1 0.004 with --config.task.template=plain --config.eval.extract=first_line,
          0 with the R1-Zero template, longer than its 256-token training sequences (README,
          "Evaluating the pretrained base model"). The R1-Zero base is experiments/r1_zero.py's.
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import configs


def get_config() -> ConfigDict:
    return ConfigDict(
        dict(
            name="eval",
            recipe="eval",
            seed=0,  # sampling key (and init when checkpoint is '')
            checkpoint="",  # a workdir whose newest checkpoint is evaluated; '' = fresh init
            model=preset("tiny"),  # must match the checkpoint's model
            tokenizer="byte",  # 'byte' or a Hugging Face tokenizer folder / tokenizer.json
            # The task block of the R1-Zero recipes, plus the split and the number of questions
            # (--config.task.options="num_digits=3,num_terms=3" sets the task's knobs).
            task=configs.task(split="test", num_questions=64),
            sampling=dict(
                temperature=0.6,  # DeepSeek-R1's evaluation setting
                top_p=0.95,
                top_k=0,
                max_new_tokens=128,
            ),
            eval=dict(
                num_samples=4,  # k answers per question
                batch_size=64,  # prompts per generate call (one compiled shape)
                extract="tags",  # tags: <answer> or \boxed{} (R1); first_line: bare answers (plain)
                use_math_verify=True,  # accept symbolically equal answers of math tasks
                num_printed=16,  # questions whose answers go to samples.txt
            ),
        )
    )
