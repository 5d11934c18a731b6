"""The `small` DeepSeek-V3-style MoE: size, cost and forward speed ('summary' recipe).

Command:  python -m moe_rl.main --config=experiments/small.py
Runtime:  well under a minute on a 2-core CPU (mostly compilation).
Result:   a table of total vs activated parameters, FLOPs per token, MLA cache bytes per token
          and forward tokens/s; also written to runs/small/summary.json.
Other presets: --config.model=... is not overridable as a whole; edit fields, e.g.
          --config.model.n_routed_experts=32.
"""

from ml_collections import ConfigDict

from moe_rl.models.config import preset


def get_config() -> ConfigDict:
    return ConfigDict(
        dict(
            name="small",
            recipe="summary",
            seed=0,  # parameter init and the random benchmark batch
            batch_size=8,  # forward-pass batch for the timing
            seq_len=128,  # forward-pass length for the timing and the attention FLOPs
            model=preset("small"),  # moe_rl.models.config.PRESETS["small"]; every field overridable
        )
    )
