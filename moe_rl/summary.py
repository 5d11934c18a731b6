"""A model's size, cost and speed, from its config: parameters vs activated parameters, FLOPs
per token, KV-cache bytes per token (MLA vs the equivalent multi-head attention) and a timed
jit-compiled forward pass. The 'summary' recipe prints them (moe_rl/recipes/summary.py)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.models import config as model_config
from moe_rl.models import counting, transformer


def kv_cache_bytes_per_token(m: model_config.ModelConfig, seq_len: int = 4096) -> dict[str, int]:
    """Cache bytes per token over all layers, and those of standard MHA with the same heads.

    MLA and GQA cache a fixed number of features per token. DeepSeek-V4's cache is a window of
    `sliding_window` keys per layer plus one entry per m tokens (and its raw buffers), so its
    bytes per token depend on the context: those of `transformer.init_cache` for `seq_len`
    slots, divided by `seq_len` (the slots' segment ids excluded, as for the others)."""
    item = jnp.dtype(m.dtype).itemsize
    if m.attention == "v4":
        cache = jax.eval_shape(lambda: transformer.init_cache(m, 1, seq_len))
        layers = [v for k, v in cache.items() if k not in ("index", "segment_ids")]
        total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(layers))
        mha = 2 * m.num_attention_heads * m.head_dim * m.num_hidden_layers * item
        return {"cache": round(total / seq_len), "mha_equivalent": mha}
    if m.attention == "mla":
        cached = m.kv_lora_rank + m.qk_rope_head_dim
        if m.index_topk:  # DSA: the lightning indexer's key too
            cached += m.index_head_dim
        mha = m.num_attention_heads * (m.qk_head_dim + m.v_head_dim)
    else:
        cached = 2 * m.num_key_value_heads * m.head_dim
        mha = 2 * m.num_attention_heads * m.head_dim
    layers = m.num_hidden_layers
    return {"cache": cached * layers * item, "mha_equivalent": mha * layers * item}


def summarize(m: model_config.ModelConfig, batch_size: int, seq_len: int, seed: int) -> dict:
    """Counts, and the median time of a jit-compiled forward on random tokens."""
    params, state = transformer.init(m, jax.random.key(seed))
    actual = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch_size, seq_len), 0, m.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(seq_len), tokens.shape)
    fwd = jax.jit(lambda p, s, t, q: transformer.forward(m, p, s, t, q)[0])
    fwd(params, state, tokens, positions).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fwd(params, state, tokens, positions).block_until_ready()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        **counting.param_counts(m),
        "params_in_tree": actual,
        "train_flops_per_token": counting.flops_per_token(m, seq_len),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(m, seq_len),
        "forward_seconds": seconds,
        "forward_tokens_per_second": batch_size * seq_len / seconds,
    }
