"""Pretrain the tiny DeepSeek-V3-style MoE (MLA, 8 routed experts top-2 + 1 shared,
MTP) on the embedded arithmetic/puzzle corpus.

Command:  python -m moe_rl.main --config=experiments/pretrain_moe.py
Runtime:  about 3-4 minutes on a 2-core CPU (300 steps x 16 x 256 tokens; ~6k tokens/s),
          plus ~20 s to prepare the corpus the first time.
Result:   validation loss from 5.6 (ln 264) to about 0.64 nats/byte; runs/pretrain_moe holds
          metrics.jsonl, TensorBoard events, loss.png, expert_load.png, summary.json, checkpoints.
The small MoE (6 layers, 16 experts top-4): --config=experiments/pretrain_moe.py:small
DeepSeek-V4 (`tiny_v4`, `small_v4`): --config=experiments/pretrain_moe.py:tiny_v4 trains its 2-D
          matrices with Muon and the rest with AdamW, as V4 does (optim.name='muon'; set
          --config.optim.name=adamw for AdamW everywhere).
Kill it at any time and re-run the same command: it resumes from the last checkpoint.
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import configs


def get_config(model: str = "tiny") -> ConfigDict:
    """`model`: a preset of moe_rl.models.config.PRESETS (--config=...pretrain_moe.py:small)."""
    return ConfigDict(
        dict(
            name="pretrain_moe" if model == "tiny" else f"pretrain_moe_{model}",
            recipe="pretrain",
            seed=0,  # init, data order
            init_checkpoint="",  # a workdir whose newest checkpoint gives the initial params
            model=preset(model),
            data=configs.data(),
            train=configs.train(),
            # As DeepSeek-V4 trains: Muon for the matrices, AdamW for the rest (train_state).
            optim=configs.optim(name="muon" if model.endswith("_v4") else "adamw"),
            mesh=configs.mesh(),  # e.g. --config.mesh.expert=4 on 8 devices
        )
    )
