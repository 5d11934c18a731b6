"""DeepSeek Sparse Attention's training stages (DeepSeek-V3.2, arXiv 2512.02556 sec. 2.1.1) on
tiny_v32 and the arithmetic corpus: a dense model, then the indexer's dense warm-up, then
sparse training, each stage's validation cross-entropy with top-k and with dense attention and
its indexer KL.

    python benchmarks/dsa_stages.py [--dense_steps=200] [--warmup_steps=60] [--sparse_steps=60]
                                    [--topk=8] [--workdir=/tmp/dsa_stages]

Stage 1 pretrains with index_topk=256 (>= seq_len 128: every key kept, the indexer untouched
by the loss); stage 2 starts from it with index_topk=--topk and train.dsa_stage='warmup'
(only the indexer trains, on its KL to the dense attention); stage 3 from stage 2 with
'sparse' (top-k attention, LM loss + KL on the selected keys). Printed per checkpoint: the
CE of the recipe's 4 validation batches (16 x 128 tokens) with top-k attention and with every
key, and the indexer's KL to the dense attention (warm-up form, averaged over layers).
Measured on the 2-core VM (200/60/60 steps, top-8; ~5 min in all):

    | checkpoint | val CE, top-8 | val CE, dense | indexer KL |
    |---|---|---|---|
    | dense | 2.858 | 1.058 | 0.739 |
    | warmup | 1.899 | 1.058 | 0.260 |
    | sparse | 1.013 | 1.110 | 0.120 |

The warm-up leaves the dense model as it was (its dense CE unchanged) and its indexer's top-8
recovers about half of the gap; sparse training closes the rest.
"""

from __future__ import annotations

import argparse
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl import loading
from moe_rl.data import packing
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import pretrain
from moe_rl.train import lm, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSE_TOPK = 256  # >= seq_len: every visible key is kept


def stage_config(topk: int, steps: int, stage: str = "", init: str = ""):
    config = runpy.run_path(os.path.join(ROOT, "experiments/pretrain_moe.py"))["get_config"](
        "tiny_v32"
    )
    config.update_from_flattened_dict(
        {
            "model.index_topk": topk,
            "train.seq_len": 128,
            "train.num_steps": steps,
            "train.eval_every": 50,
            "train.checkpoint_every": 50,
            "train.dsa_stage": stage,
            "data.num_documents": 20_000,
            "data.num_validation": 500,
            "init_checkpoint": init,
        }
    )
    if stage:  # from a trained model: a short warmup, the indexer's own learning rate
        config.update_from_flattened_dict(
            {"optim.learning_rate": 1e-3, "optim.warmup_steps": 5, "optim.weight_decay": 0.0}
        )
    return config


def evaluate(workdir: str, topk: int) -> dict:
    """Validation CE with top-k and with every key, and the indexer's KL, of a stage's model."""
    config = stage_config(topk, 1)
    train_src, val_src = lm.load_sources(config)
    tokenizer = lm.run_tokenizer(config.data.tokenizer, train_src, workdir)
    val = packing.PackedBatches(val_src, tokenizer, 16, 128, shuffle=False)
    val = [next(val) for _ in range(config.train.eval_batches)]
    out = {}
    for name, k in (("ce_topk", topk), ("ce_dense", DENSE_TOPK)):
        config.model.index_topk = k
        cfg = ModelConfig.from_config(config.model)
        params, model_state, _ = loading.load_model(workdir, cfg, None, key=workdir)
        state = train_state.TrainState(jnp.zeros((), jnp.int32), params, None, model_state, None)
        step = jax.jit(lm.make_eval_step(cfg, lm.LossConfig()))
        sums = np.sum([jax.device_get(step(state, b)) for b in val], axis=0)
        out[name] = float(sums[0] / sums[1])
        if k == topk:
            kl = jax.jit(
                lambda p, s, b, cfg=cfg: lm.indexer_kl_loss(
                    transformer.forward(
                        cfg, p, s, b["tokens"], b["positions"], b["segment_ids"], dsa="warmup"
                    )[2],
                    b["segment_ids"],
                )
            )
            out["indexer_kl"] = float(np.mean([kl(params, model_state, b) for b in val]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense_steps", type=int, default=200)
    parser.add_argument("--warmup_steps", type=int, default=60)
    parser.add_argument("--sparse_steps", type=int, default=60)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/dsa_stages")
    args = parser.parse_args()
    folder = lambda name: os.path.join(args.workdir, name)
    stages = (
        ("dense", stage_config(DENSE_TOPK, args.dense_steps)),
        ("warmup", stage_config(args.topk, args.warmup_steps, "warmup", folder("dense"))),
        ("sparse", stage_config(args.topk, args.sparse_steps, "sparse", folder("warmup"))),
    )
    for name, config in stages:
        pretrain.run(config, folder(name))  # a finished stage is not trained again
    print(f"| checkpoint | val CE, top-{args.topk} | val CE, dense | indexer KL |")
    print("|---|---|---|---|")
    for name, _ in stages:
        r = evaluate(folder(name), args.topk)
        print(f"| {name} | {r['ce_topk']:.3f} | {r['ce_dense']:.3f} | {r['indexer_kl']:.3f} |")


if __name__ == "__main__":
    main()
