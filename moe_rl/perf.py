"""Machine speed: the matmul peak that MFU is measured against, and the line benchmarks print
to say which machine measured them."""

from __future__ import annotations

import os
import platform
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


def machine_description() -> str:
    """JAX version, backend, device and CPU counts and the CPU model, for benchmark tables."""
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (
        f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices "
        f"on {os.cpu_count()} CPUs ({cpu})"
    )
