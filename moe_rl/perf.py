"""Machine speed: the matmul peak that MFU is measured against, and the line benchmarks print
to say which machine measured them."""

from __future__ import annotations

import ctypes
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def retain_host_memory() -> bool:
    """Keep freed host memory in the process instead of returning it to the kernel (glibc).

    XLA:CPU allocates each execution's scratch buffer afresh (1.5 GB for the small model's
    training step); glibc serves blocks that large with mmap and unmaps them on free, so every
    step page-faulted its whole working set back in, zero-filled by the kernel: 380k faults and
    ~1.2 s of system time per small-model step (20-30% of its CPU time). One malloc arena, no
    mmap'd blocks and no trimming (threshold -1) make the next step reuse the pages.
    Called when moe_rl is imported; MOE_RL_RETAIN_MEMORY=0 opts out. True if applied.
    """
    if os.environ.get("MOE_RL_RETAIN_MEMORY", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(mallopt(param, value) == 1 for param, value in settings)


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
