"""moe_rl: DeepSeek-V3-style MoE pretraining, R1-Zero GRPO and distillation in JAX."""

__version__ = "0.1.0"

from moe_rl import perf as _perf

_perf.retain_host_memory()  # before XLA's threads allocate: see its docstring
