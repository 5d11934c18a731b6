"""The `tiny` DeepSeek-V3-style MoE: size, cost and forward speed ('summary' recipe).

Command:  python -m moe_rl.main --config=experiments/tiny.py
Runtime:  well under a minute on a 2-core CPU (mostly compilation).
Result:   a table of total vs activated parameters, FLOPs per token, MLA cache bytes per token
          and forward tokens/s; also written to runs/tiny/summary.json.
Other presets: --config.model=... is not overridable as a whole; edit fields, e.g.
          --config.model.n_routed_experts=32.
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset


def get_config() -> ConfigDict:
    return ConfigDict(
        dict(
            name="tiny",
            recipe="summary",
            seed=0,  # parameter init and the random benchmark batch
            batch_size=8,  # forward-pass batch for the timing
            seq_len=128,  # forward-pass length for the timing and the attention FLOPs
            model=preset("tiny"),  # moe_rl.models.config.PRESETS["tiny"]; every field overridable
        )
    )
