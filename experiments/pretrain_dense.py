"""Pretrain the dense GQA baseline (about the MoE's activated parameters) on the embedded
arithmetic/puzzle corpus.

Command:  python -m moe_rl.main --config=experiments/pretrain_dense.py
Runtime:  about 3 minutes on a 2-core CPU (300 steps x 16 x 256 tokens).
Result:   validation loss about 0.63 nats/byte (see experiments/moe_vs_dense.py).
Kill it at any time and re-run the same command: it resumes from the last checkpoint.
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import configs


def get_config(model: str = "tiny_dense") -> ConfigDict:
    """`model`: a model preset (--config=experiments/pretrain_dense.py:small_dense)."""
    return ConfigDict(
        dict(
            name="pretrain_dense" if model == "tiny_dense" else f"pretrain_{model}",
            recipe="pretrain",
            seed=0,  # init, data order
            init_checkpoint="",  # a workdir whose newest checkpoint gives the initial params
            model=preset(model),
            data=configs.data(),
            train=configs.train(),
            optim=configs.optim(),
            mesh=configs.mesh(),  # e.g. --config.mesh.fsdp=2 on 2 devices
        )
    )
