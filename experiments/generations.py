"""Each DeepSeek generation at `tiny` size side by side ('summary' recipe over presets): V3
(`tiny`: MLA, DeepSeekMoE, MTP), V3.2 (`tiny_v32`: + DSA's lightning indexer) and V4
(`tiny_v4`: hybrid compressed attention, mHC, hash-routed and sqrtsoftplus MoE).

Command:  python -m moe_rl.main --config=experiments/generations.py
Runtime:  about a minute on a 2-core CPU (mostly compiling the three forwards).
Result:   a table of total and activated parameters, training FLOPs and KV-cache bytes per token
          at 1k, 8k and 32k tokens of context (V4's cache is a window plus one entry per m
          tokens, so its bytes per token fall with the context), and forward tokens/s;
          written to runs/generations/generations.md and .json.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict(
        dict(
            name="generations",
            recipe="summary",
            seed=0,  # parameter init and the random benchmark batch
            presets=("tiny", "tiny_v32", "tiny_v4"),  # moe_rl.models.config.PRESETS names
            contexts=(1024, 8192, 32768),  # context lengths of the FLOPs and cache rows
            batch_size=8,  # forward-pass batch for the timing
            seq_len=128,  # forward-pass length for the timing
        )
    )
