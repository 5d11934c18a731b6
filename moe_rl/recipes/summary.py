"""Recipe 'summary': build a model from its config and report its size, cost and speed
(`moe_rl.summary.summarize`): parameters vs activated parameters, FLOPs per token, KV-cache
bytes per token (MLA vs the equivalent multi-head attention) and a timed jit-compiled forward
pass; writes `<workdir>/summary.json`. With `config.presets` (model preset names), the same for
each preset side by side, FLOPs and cache bytes at each of `config.contexts` tokens
(`compare`; `<workdir>/generations.md` and `.json`).

    python -m moe_rl.main --config=experiments/small.py
    python -m moe_rl.main --config=experiments/generations.py
"""

from __future__ import annotations

import json
import os

import jax

from moe_rl.models import config as model_config
from moe_rl.models import counting
from moe_rl.summary import kv_cache_bytes_per_token, summarize


def run(config, workdir: str) -> dict:
    if config.get("presets"):
        return compare(config, workdir)
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


def compare(config, workdir: str) -> dict:
    """`summarize` for each of `config.presets`, as one markdown table (a column per preset)."""
    contexts = [int(c) for c in config.contexts]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (
        f"jax {jax.__version__}, {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start"
    )
    results = {}
    for name in config.presets:
        m = model_config.ModelConfig.from_config(model_config.preset(name))
        result = summarize(m, config.batch_size, config.seq_len, config.seed)
        result["at_context"] = {
            c: {
                "train_flops_per_token": counting.flops_per_token(m, c),
                "kv_cache_bytes_per_token": kv_cache_bytes_per_token(m, c)["cache"],
            }
            for c in contexts
        }
        result["attention"] = m.attention
        results[name] = result
    rows = [
        ("attention", lambda r: r["attention"]),
        ("total params", lambda r: f"{r['total']:,}"),
        ("activated params / token", lambda r: f"{r['activated']:,}"),
    ]
    for c in contexts:
        rows.append(
            (
                f"train FLOPs / token at {c:,}",
                lambda r, c=c: f"{r['at_context'][c]['train_flops_per_token']:.3g}",
            )
        )
    for c in contexts:
        rows.append(
            (
                f"KV cache bytes / token at {c:,}",
                lambda r, c=c: f"{r['at_context'][c]['kv_cache_bytes_per_token']:,}",
            )
        )
    rows.append(
        (
            f"forward tokens / s ({config.batch_size} x {config.seq_len})",
            lambda r: f"{r['forward_tokens_per_second']:,.0f}",
        )
    )
    lines = [
        "| | " + " | ".join(f"`{n}`" for n in results) + " |",
        "| --- |" + " ---: |" * len(results),
    ]
    lines += [
        f"| {label} | " + " | ".join(f(r) for r in results.values()) + " |" for label, f in rows
    ]
    table = "\n".join(lines) + f"\n\nForward timed on: {machine}."
    print(table)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "generations.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "generations.json"), "w") as f:
        json.dump(
            {
                n: {**r, "at_context": {str(c): v for c, v in r["at_context"].items()}}
                for n, r in results.items()
            },
            f,
            indent=2,
        )
    return results
