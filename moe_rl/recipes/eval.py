"""Recipe 'eval': sample k answers per test question and score them as DeepSeek-R1 reports
(the metrics: `moe_rl.evaluate`), printed as a table, written to <workdir>/eval.json, with a
sample of answers in <workdir>/samples.txt.

    python -m moe_rl.main --config=experiments/eval.py --config.task.name=rg:chain_sum
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from moe_rl import hf, sampling
from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.evaluate import (
    check_tokenizer,
    evaluate_policy,
    format_table,
    load_model,
    validate_eval_config,
    write_samples,
)
from moe_rl.models.config import ModelConfig


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    config = hf.with_hf_model(config, "checkpoint")  # a Hugging Face folder brings its model
    validate_eval_config(config)
    if hf.is_hf_folder(config.checkpoint) and config.tokenizer == "byte":
        raise ValueError(
            f"config.tokenizer='byte' with the Hugging Face model config.checkpoint="
            f"{config.checkpoint!r}: use its tokenizer, --config.tokenizer={config.checkpoint}"
        )
    cfg = ModelConfig.from_config(config.model)
    sp = sampling.SamplingParams.from_config(config.sampling)
    e, t = config.eval, config.task
    tokenizer = tokenizers.get_tokenizer(config.tokenizer)
    check_tokenizer(tokenizer, cfg)
    task = task_from_config(t)
    examples = task.examples(t.split, t.num_questions, seed=t.seed)
    params, model_state, source = load_model(config, cfg)
    os.makedirs(workdir, exist_ok=True)
    metrics, texts, scores, prompts = evaluate_policy(
        cfg,
        params,
        model_state,
        tokenizer,
        task,
        examples,
        t=t,
        e=e,
        sp=sp,
        key=jax.random.key(config.seed),
    )
    # What the numbers were made with: the task block (template, seed, options), the
    # evaluation block (samples, extractor) and the sampling settings.
    result = {
        "task": t.name,
        "split": t.split,
        "model": source,
        "metrics": metrics,
        "settings": {
            "seed": config.seed,
            "task": t.to_dict(),
            "eval": e.to_dict(),
            "sampling": config.sampling.to_dict(),
            "tokenizer": config.tokenizer,
        },
    }
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_samples(
        os.path.join(workdir, "samples.txt"),
        examples,
        prompts,
        texts,
        scores,
        e.num_samples,
        e.num_printed,
    )
    k = e.num_samples
    print(f"\n{t.name} ({t.split}, {len(examples)} questions x {k} samples), model: {source}")
    print(format_table(metrics))
    return result
