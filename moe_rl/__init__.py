"""moe_rl: DeepSeek-V3-style MoE pretraining, R1-Zero GRPO and distillation in JAX."""

__version__ = "0.1.0"
