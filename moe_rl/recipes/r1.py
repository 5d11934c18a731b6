"""Recipe 'r1': the DeepSeek-R1 pipeline at small scale (DeepSeek-AI 2025, sec. 2.3).

    base ──cold-start SFT──► cold_start ──GRPO──► rl ──rejection sampling──► data/rl_answers
      │                                                                          │
      └──────────── SFT on rl_answers + cold-start examples ◄────────────────────┘
                                   │
                                   ▼
                                  sft ──GRPO (optional, final_grpo.num_steps > 0)──► rl2

1. Cold start: the base is fine-tuned on a few hundred long, readable reasoning examples
   (`data/cold_start.py`: column-by-column worked sums with a summary, written by a program).
2. Reasoning-oriented RL: GRPO from the cold-start model, the R1-Zero rewards.
3. Rejection sampling: the RL model answers training questions k times; the verified,
   well-formatted answers are kept (`distill.teacher_dataset`).
4. SFT of the *base* (not the RL model, as R1 did with DeepSeek-V3-Base) on the combined data.
5. Optionally a final GRPO stage from that model (R1's "RL for all scenarios").

Every stage has its own folder in the workdir, its own checkpoints and is reused when finished;
the final table gives each stage's held-out metrics.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from moe_rl import checkpoint, evaluate, sampling
from moe_rl.data import cold_start, tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import pretrain, r1_zero
from moe_rl.train import distill, distill_data, grpo

ConfigDict = ml_collections.ConfigDict


def validate_r1_config(config: ml_collections.ConfigDict) -> None:
    """The checks that need no compilation; errors name the key and what is allowed."""
    grpo.validate_grpo_config(config)
    sampling.SamplingParams.from_config(config.rejection.sampling)
    checks = [
        ("cold_start.num_examples", config.cold_start.num_examples >= 2, ">= 2"),
        ("rejection.num_questions", config.rejection.num_questions >= 1, ">= 1"),
        ("rejection.samples_per_question", config.rejection.samples_per_question >= 1, ">= 1"),
        ("final_grpo.num_steps", config.final_grpo.num_steps >= 0, ">= 0 (0 skips stage 5)"),
        (
            "cold_start.validation_fraction",
            0 <= config.cold_start.validation_fraction < 1,
            "in [0, 1)",
        ),
        ("sft.validation_fraction", 0 <= config.sft.validation_fraction < 1, "in [0, 1)"),
        ("task.name", config.task.name == "arithmetic", "'arithmetic' (the cold-start writer)"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            block, field = key.split(".")
            raise ValueError(f"config.{key}={config[block][field]!r}; allowed: {allowed}")


def _sft_config(config, block, init: str, tokenizer_dir: str, paths: dict) -> ConfigDict:
    c = ml_collections.ConfigDict(block.to_dict())
    c.update(recipe="sft", model=config.model, seed=config.seed, init_checkpoint=init)
    c.data.update(tokenizer=tokenizer_dir, sft_train=paths["train"])
    c.data.sft_validation = paths["validation"]
    return c


def _grpo_config(config, init: str, tokenizer_dir: str, num_steps: int) -> ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.update(recipe="r1_zero", init_checkpoint=init, tokenizer=tokenizer_dir)
    c.grpo.num_steps = num_steps
    return c


def _write_split(folder: str, name: str, rows: list[dict], validation_fraction: float) -> dict:
    train, val = distill.split_rows(rows, validation_fraction)
    paths = {}
    for split, part in (("train", train), ("validation", val or train[:1])):
        paths[split] = os.path.join(folder, f"{name}_{split}.jsonl")
        distill_data.write_jsonl(paths[split], part, {"rows": len(part)})
    return paths


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    validate_r1_config(config)
    cfg = ModelConfig.from_config(config.model)
    t = config.task
    task = task_from_config(t)
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.join(workdir, "data")

    # 0. The base: config.init_checkpoint, or pretrained now into <workdir>/base.
    _, _, base_source = r1_zero.base_model(config, cfg, workdir)
    base_dir = config.init_checkpoint or os.path.join(workdir, "base")
    tokenizer_dir = grpo.base_tokenizer(config, workdir)
    tokenizer = tokenizers.get_tokenizer(tokenizer_dir)
    evaluate.check_tokenizer(tokenizer, cfg)

    # 1. Cold start: SFT of the base on program-written long reasoning.
    cs = config.cold_start
    examples = task.examples("train", cs.num_examples, seed=cs.question_seed)
    rows = cold_start.cold_start_rows(examples, t.template, t.think_opened)
    cold_paths = _write_split(data_dir, "cold_start", rows, cs.validation_fraction)
    cold_dir = os.path.join(workdir, "cold_start")
    print(f"Stage 1: cold-start SFT on {len(rows)} worked examples into {cold_dir}")
    pretrain.run(_sft_config(config, cs, base_dir, tokenizer_dir, cold_paths), cold_dir)

    # 2. Reasoning-oriented RL from the cold-start model.
    rl_dir = os.path.join(workdir, "rl")
    print(f"Stage 2: GRPO from the cold-start model into {rl_dir}")
    rl = r1_zero.run(_grpo_config(config, cold_dir, tokenizer_dir, config.grpo.num_steps), rl_dir)

    # 3. Rejection sampling of the RL model on training questions.
    r = config.rejection
    load = ConfigDict(dict(checkpoint=os.path.join(rl_dir, "grpo"), seed=config.seed))
    rl_params, rl_state, rl_source = evaluate.load_model(load, cfg)
    questions = task.examples("train", r.num_questions, seed=r.question_seed)
    print(f"Stage 3: rejection sampling, {r.num_questions} questions x {r.samples_per_question}")
    kept, stats = distill.teacher_dataset(
        os.path.join(data_dir, "rl_answers.jsonl"),
        cfg,
        rl_params,
        rl_state,
        tokenizer,
        task,
        questions,
        k=r.samples_per_question,
        sp=sampling.SamplingParams.from_config(r.sampling),
        template=t.template,
        think_opened=t.think_opened,
        batch_size=config.eval.batch_size,
        key=jax.random.key(config.seed + 2),
        shortest_only=r.shortest_only,
        teacher=rl_source,
    )

    # 4. SFT of the base on the combined data.
    combined = kept + rows
    sft_paths = _write_split(data_dir, "combined", combined, config.sft.validation_fraction)
    sft_dir = os.path.join(workdir, "sft")
    print(
        f"Stage 4: SFT of the base on {len(kept)} RL answers + {len(rows)} cold-start examples "
        f"into {sft_dir}"
    )
    pretrain.run(_sft_config(config, config.sft, base_dir, tokenizer_dir, sft_paths), sft_dir)

    # 5. Optional final RL.
    results = {
        "base": evaluate_checkpoint(config, cfg, tokenizer, task, base_dir, workdir, "base"),
        "cold_start": rl["before"],
        "rl": rl["after"],
    }
    if config.final_grpo.num_steps > 0:
        rl2_dir = os.path.join(workdir, "rl2")
        print(f"Stage 5: GRPO from the SFT model into {rl2_dir}")
        rl2 = r1_zero.run(
            _grpo_config(config, sft_dir, tokenizer_dir, config.final_grpo.num_steps), rl2_dir
        )
        results.update(sft=rl2["before"], rl2=rl2["after"])
    else:
        results["sft"] = evaluate_checkpoint(config, cfg, tokenizer, task, sft_dir, workdir, "sft")

    k = config.eval.num_samples
    names = {
        "base": "base (pretrained)",
        "cold_start": "1. cold-start SFT",
        "rl": "2. GRPO",
        "sft": "4. SFT of base on RL answers + cold start",
        "rl2": "5. final GRPO",
    }
    table = "\n".join(
        [
            f"| stage | pass@1 | maj@{k} | format | mean length |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        + [
            f"| {names[s]} | {m['pass@1']:.3f} | {m[f'maj@{k}']:.3f} | "
            f"{m['format_rate']:.3f} | {m['mean_length']:.1f} |"
            for s, m in results.items()
        ]
    )
    summary = {
        "base": base_source,
        "results": results,
        "rejection": {key: v for key, v in stats.items() if key != "of"},
        "cold_start_examples": len(rows),
        "sft_rows": len(combined),
        "table": table,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"\nRejection sampling: {stats['kept']} of {stats['sampled']} answers kept "
        f"(acceptance {stats['acceptance_rate']:.2f})"
    )
    print(f"{t.name}: {config.eval.num_questions} held-out questions x {k} samples")
    print(table)
    return summary


def evaluate_checkpoint(config, cfg, tokenizer, task, folder: str, workdir: str, name: str) -> dict:
    """Held-out metrics of `folder`'s newest checkpoint, with the same questions, samples and
    key as the GRPO stages' evaluations; cached in <workdir>/eval_<name>.json per checkpoint."""
    step = checkpoint.Checkpointer(folder, read_only=True).latest_step()
    what = {"checkpoint": folder, "step": step, "eval": config.eval.to_dict()}
    path = os.path.join(workdir, f"eval_{name}.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("of") == what:
            return saved["metrics"]
    load = ConfigDict(dict(checkpoint=folder, seed=config.seed))
    params, state, _ = evaluate.load_model(load, cfg)
    test = task.examples("test", config.eval.num_questions, seed=config.task.seed)
    metrics = evaluate.evaluate_policy(
        cfg,
        params,
        state,
        tokenizer,
        task,
        test,
        t=config.task,
        e=config.eval,
        sp=sampling.SamplingParams.from_config(config.eval.sampling),
        key=jax.random.key(config.seed + 1),
    )[0]
    with open(path, "w") as f:
        json.dump({"of": what, "metrics": metrics}, f, indent=2)
    return metrics
