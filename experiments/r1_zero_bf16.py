"""R1-Zero with bfloat16 compute, with and without routing replay (issue 18's experiment): the
tiny MoE's sampler and trainer then disagree (1.6-1.7% of routing decisions on the R1-Zero
base, docs/results/rl_moe/mismatch.md); does replaying the sampler's experts with truncated
importance sampling against a recomputed pi_old change what GRPO learns?

Commands (each GRPO run starts from the float32 base of experiments/r1_zero.py's same seed,
so run that first; its runs are the float32 rows):
          python -m moe_rl.main --config=experiments/r1_zero.py --seeds=0-2
          python -m moe_rl.main --config=experiments/r1_zero_bf16.py:plain --seeds=0-2
          python -m moe_rl.main --config=experiments/r1_zero_bf16.py:replay --seeds=0-2
          python benchmarks/rl_bf16.py   # the table and figure of the three
          (another base: --config.init_checkpoint=<workdir>/base, '{seed}' = the seed)
Variants: 'plain': model.dtype=bfloat16, nothing else changed; 'replay': also
          grpo.routing_replay, grpo.old_logprobs='recompute' and
          grpo.is_correction='token_truncate' (TIS, C = grpo.is_threshold = 2).
Runtime:  ~4-5 min a seed and variant on a 2-core EPYC VM (GRPO and both evaluations; the
          base is reused), docs/results/rl_moe/bf16.md.
Result:   docs/results/rl_moe/bf16.md and bf16.png: held-out pass@1 and the mismatch metrics
          (mismatch_mean/max, routing_mismatch) over training, per seed, for float32, bfloat16
          and bfloat16 with replay + TIS.
"""

from ml_collections import ConfigDict

from moe_rl.train import configs

VARIANTS = ("plain", "replay")


def get_config(variant: str = "replay") -> ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"experiments/r1_zero_bf16.py:{variant}; allowed variants: {VARIANTS}")
    config = configs.r1_zero()
    config.name = f"r1_zero_bf16_{variant}"
    config.model.dtype = "bfloat16"
    # The float32 base of experiments/r1_zero.py's run of the same seed ('{seed}': config.seed).
    config.init_checkpoint = "runs/r1_zero/seed_{seed}/base"
    if variant == "replay":
        config.grpo.routing_replay = True
        config.grpo.old_logprobs = "recompute"
        config.grpo.is_correction = "token_truncate"
    return config
