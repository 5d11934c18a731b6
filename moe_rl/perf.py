"""Machine speed: the matmul peak that MFU is measured against."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def measure_matmul_peak(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """Best FLOP/s of a jit-compiled n x n x n matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / float(np.min(times))
