"""Which method does an R1-Zero base use, and how often is each right? On TRAIN-split questions.

    python docs/results/r1_zero/probe_bases.py runs/r1_zero/seed_0 runs/r1_zero/seed_1 ...
    (--mtp=1 before the workdirs of bases pretrained with the MTP module, as before 2026-12-02)

For each workdir (a finished or running experiments/r1_zero.py seed: its base/ folder), samples
8 responses to each of 128 train-split questions at the GRPO sampling settings (T=1) and splits
them by method: 'columns' (a column addition, "... by columns. Ones: ..."), 'short' (a think
of one sentence: a guess such as "47 + 38 = 85."), 'other' (anything else, e.g. a running sum).
Prints and writes base_probe.json beside this file: per base the share and accuracy of each.

GRPO can only amplify what the base does: a run learns when the base's column method is right
more often than its guesses. The test split is not used here.
"""

import json
import os
import re
import runpy
import sys

import jax
import numpy as np

from moe_rl import evaluate, sampling
from moe_rl.data import tokenizers
from moe_rl.data.tasks import task_from_config
from moe_rl.models.config import ModelConfig
from moe_rl.train import grpo

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SHORT = re.compile(r"<think> [^.]*\. </think>")


def method(text: str) -> str:
    if "by columns" in text:
        return "columns"
    return "short" if SHORT.search(text) else "other"


def probe(workdir: str, mtp: int = 0, questions: int = 128, k: int = 8) -> dict:
    config = runpy.run_path(os.path.join(ROOT, "experiments", "r1_zero.py"))["get_config"]()
    config.init_checkpoint = os.path.join(workdir, "base")
    config.model.num_nextn_predict_layers = mtp
    cfg = ModelConfig.from_config(config.model)
    params, state, source = grpo.base_model(config, cfg, workdir)
    tokenizer = tokenizers.get_tokenizer(grpo.base_tokenizer(config, workdir))
    task = task_from_config(config.task)
    examples = task.examples("train", questions, seed=123)
    config.eval.num_samples = k
    sp = sampling.SamplingParams.from_config(config.sampling)  # GRPO's: T = 1
    metrics, texts, scores, _ = evaluate.evaluate_policy(
        cfg, params, state, tokenizer, task, examples, t=config.task, e=config.eval, sp=sp,
        key=jax.random.key(7),
    )  # fmt: skip
    acc = np.concatenate([s["accuracy"] for s in scores])
    kinds = np.array([method(t) for t in texts])
    out = {"base": source, "train_pass@1": float(acc.mean()), "samples": len(texts)}
    for kind in ("columns", "short", "other"):
        sel = kinds == kind
        out[kind] = {
            "share": float(sel.mean()),
            "accuracy": float(acc[sel].mean()) if sel.any() else None,
        }
    return out


if __name__ == "__main__":
    path = os.path.join(HERE, "base_probe.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    mtp = 0
    for arg in sys.argv[1:]:
        if arg.startswith("--mtp="):
            mtp = int(arg.split("=")[1])
            continue
        name = "/".join(os.path.normpath(arg).split(os.sep)[-2:])  # e.g. r1_zero/seed_1
        results[name] = row = probe(arg, mtp)
        print(name, json.dumps(row))
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
