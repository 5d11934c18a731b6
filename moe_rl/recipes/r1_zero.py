"""Recipe 'r1_zero': GRPO with verifiable rewards (DeepSeekMath sec. 4; DeepSeek-R1-Zero).

Pretrain a base model first unless `init_checkpoint` is given (the pretraining recipe, resumed
if it already ran in <workdir>/base), evaluate it on held-out questions, run GRPO through
`loop.train_loop` (`grpo.train`; the step: `grpo_step.make_step`; rollouts: `rollout.Roller`)
with checkpoints, metrics and sample completions, evaluate the policy on the same questions,
print a before/after table.

    python -m moe_rl.main --config=experiments/r1_zero.py [--seeds=0-4]
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from moe_rl import evaluate, hf, loading, plots, sharding
from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import pretrain
from moe_rl.train import loop
from moe_rl.train.grpo import (
    HeldOut,
    base_tokenizer,
    before_after_table,
    train,
    validate_grpo_config,
)


def base_model(config, cfg: ModelConfig, workdir: str, shardings=None):
    """(params, model_state, description) of the base policy: config.init_checkpoint's newest
    checkpoint (or a Hugging Face model folder), else a model pretrained now with
    config.pretrain into <workdir>/base."""
    source = config.init_checkpoint
    if not source:
        source = os.path.join(workdir, "base")
        pre = ml_collections.ConfigDict(config.pretrain.to_dict())
        pre.model = config.model
        pre.seed = config.seed
        pre.init_checkpoint = ""
        n = pre.train.num_steps
        what = f"Pretraining the base model into {source} ({n} steps)"
        loop.run_stage(source, n, lambda: pretrain.run(pre, source), what)
    # Streamed straight into the (params, state) shardings.
    return loading.load_model(source, cfg, shardings, key="config.init_checkpoint")


# --seeds (moe_rl/sweep.py): each seed's row, and the training curves overlaid in seeds.png.
SEED_CURVES = ("sampled_accuracy", "accuracy", "format", "response_length")


def seed_row(result: dict) -> dict[str, float]:
    """Held-out pass@1 before and after GRPO, its gain, the policy's format rate and the mean
    response length (tokens) before and after."""
    before, after = result["before"], result["after"]
    return {
        "base pass@1": before["pass@1"],
        "pass@1": after["pass@1"],
        "gain": after["pass@1"] - before["pass@1"],
        "format": after["format_rate"],
        "base length": before["mean_length"],
        "length": after["mean_length"],
    }


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Recipe 'r1_zero'; `on_step(step, metrics)` is called after each GRPO step (e.g. a live
    plot in a notebook). A Hugging Face `init_checkpoint` brings its own model config."""
    config = hf.with_hf_model(config)
    validate_grpo_config(config)
    mesh = sharding.mesh_from_config(config)
    if mesh is None:
        return _run(config, workdir, None, on_step)
    g = config.grpo
    sharding.check_batch(g.num_questions, mesh, "config.grpo.num_questions")
    sharding.check_batch(
        g.minibatch_size // g.num_generations, mesh, "config.grpo.minibatch_size/num_generations"
    )
    with jax.set_mesh(mesh):
        return _run(config, workdir, mesh, on_step)


def _run(config: ml_collections.ConfigDict, workdir: str, mesh, on_step=None) -> dict:
    cfg = ModelConfig.from_config(config.model)
    t = config.task
    task = task_from_config(t)
    test_examples = task.examples("test", config.eval.num_questions, seed=t.seed)
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    model_sh = None if mesh is None else sharding.model_shardings(cfg, mesh)
    params, model_state, source = base_model(config, cfg, workdir, model_sh)
    if mesh is not None:  # split as in pretraining, before anything runs on the mesh
        params, model_state = jax.device_put((params, model_state), model_sh)
    seconds = {"base": time.perf_counter() - started}
    tokenizer = tokenizers.get_tokenizer(base_tokenizer(config, workdir))
    evaluate.check_tokenizer(tokenizer, cfg)
    held_out = HeldOut(config, cfg, tokenizer, task, test_examples, workdir)
    before = held_out.base(params, model_state, source)
    seconds["base_eval"] = time.perf_counter() - started - seconds["base"]

    state = train(config, cfg, task, tokenizer, params, model_state, workdir, mesh, on_step)
    seconds["grpo"] = time.perf_counter() - started - seconds["base"] - seconds["base_eval"]
    after = held_out.policy(state.params, state.model_state, int(state.step), before)
    rows = loop.read_metrics(workdir)
    plot = plots.plot_grpo(rows, os.path.join(workdir, "r1_zero.png"), f"GRPO on {t.name}")
    result: dict[str, Any] = {
        "task": t.name,
        "base": source,
        "before": before,
        "after": after,
        "plot": plot,
        "steps": int(state.step),
        # Wall time of this invocation: what was reused (base model, GRPO steps) costs ~0.
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(held_out.header())
    print(before_after_table(before, after, config.eval.num_samples))
    print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result["seconds"].items()))
    return result
