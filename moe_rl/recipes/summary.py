"""Recipe 'summary': build a model from its config and report its size, cost and speed
(`moe_rl.summary.summarize`): parameters vs activated parameters, FLOPs per token, KV-cache
bytes per token (MLA vs the equivalent multi-head attention) and a timed jit-compiled forward
pass; writes `<workdir>/summary.json`.

    python -m moe_rl.main --config=experiments/small.py
"""

from __future__ import annotations

import json
import os

from moe_rl.models import config as model_config
from moe_rl.summary import summarize


def run(config, workdir: str) -> dict:
    m = model_config.ModelConfig.from_config(config.model)
    result = summarize(m, config.batch_size, config.seq_len, config.seed)
    cache = result["kv_cache_bytes_per_token"]
    rows = [
        ("total params", f"{result['total']:,}"),
        ("activated params / token", f"{result['activated']:,}"),
        ("  of which embedding", f"{result['embedding']:,}"),
        ("MTP params (training only)", f"{result['mtp']:,}"),
        ("train FLOPs / token", f"{result['train_flops_per_token']:.3g}"),
        ("KV cache bytes / token", f"{cache['cache']:,} (MHA: {cache['mha_equivalent']:,})"),
        (
            f"forward {config.batch_size}x{config.seq_len}",
            f"{result['forward_seconds'] * 1e3:.1f} ms",
        ),
        ("forward tokens / s", f"{result['forward_tokens_per_second']:,.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
