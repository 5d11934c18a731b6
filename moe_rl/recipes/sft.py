"""Recipe 'sft': supervised fine-tuning on (prompt, completion) pairs, the loss on the
completions only. The same training as pretraining (`moe_rl.recipes.pretrain.run`): the recipe
name selects the data, JSONL files of {"prompt", "completion"} lines (config.data.sft_train,
config.data.sft_validation) instead of a corpus; `config.init_checkpoint` is the model to tune.

    python -m moe_rl.main --config=experiments/sft.py
"""

from moe_rl.recipes.pretrain import run

__all__ = ["run"]
