"""The recipes: each module's `run(config, workdir)` is one experiment kind, composed from the
library below it (moe_rl.train, moe_rl.evaluate, ...). `config.recipe` names it; `main` and
the Colab notebooks call the same `run`. A recipe may also define `seed_row(result)` and
`seed_figure(workdir, seeds)` for `main --seeds` (moe_rl/sweep.py).
"""

import importlib

# recipe name -> module defining run(config, workdir)
RECIPES = {
    "summary": "moe_rl.recipes.summary",
    "pretrain": "moe_rl.recipes.pretrain",
    "sft": "moe_rl.recipes.sft",
    "moe_vs_dense": "moe_rl.recipes.moe_vs_dense",
    "eval": "moe_rl.recipes.eval",
    "r1_zero": "moe_rl.recipes.r1_zero",
    "distill": "moe_rl.recipes.distill",
    "distill_vs_rl": "moe_rl.recipes.distill_vs_rl",
    "r1": "moe_rl.recipes.r1",
}


def get_recipe_module(name: str):
    """The module of a recipe (its `run(config, workdir)`); unknown names list the known ones."""
    if name not in RECIPES:
        raise ValueError(f"Unknown config.recipe={name!r}; known recipes: {sorted(RECIPES)}")
    return importlib.import_module(RECIPES[name])
