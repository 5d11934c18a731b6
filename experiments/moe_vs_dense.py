"""MoE vs dense at equal activated FLOPs per token, on a table of facts (knowledge capacity).

The MoE: 64 routed experts of width 32 (top-6) plus 2 shared ones in each of 3 layers; the dense
model: one SwiGLU MLP of width 256 = (6 + 2) x 32. Same MLA attention, width, depth, data, seed
and data order; the MoE holds 5.7x the parameters and activates 4.7% more FLOPs (its router).
Corpus: a table of 8,000 random facts, one a document ("Q7m": the key "Q7" has the value "m";
moe_rl/data/lookup.py), scored on the value tokens; 2,000 steps at a constant learning rate.

Command:  python -m moe_rl.main --config=experiments/moe_vs_dense.py --workdir=runs/moe_vs_dense
          over seeds: --seeds=0-2 (each in <workdir>/seed_<n>; docs/results/moe_vs_dense)
Runtime:  ~19 min per seed alone on the 2-core CPU (MoE ~9 min of steps, dense ~7, evaluations)
Result:   README "MoE vs dense": the MoE leaves the no-knowledge plateau (log 26 nats) first and
          stays ahead on 4 seeds; it reaches the dense model's final loss with 0.26-0.67x its
          FLOPs (docs/results/moe_vs_dense/seeds.md).
The other corpora: --config=experiments/moe_vs_dense.py:skills (36 letter codes, 500 steps: the
dense model wins) and :facts (biographies of 300 people, 500 steps).
"""

from ml_collections import ConfigDict

from moe_rl.models.config import model_config_dict
from moe_rl.train import configs

# The two models share everything but the FFN: MLA attention, RoPE, width, depth, no MTP.
COMMON = dict(
    vocab_size=264,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    attention="mla",
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    num_nextn_predict_layers=0,
    max_position_embeddings=1024,
)
FFN = 256  # the dense FFN width = (shared + activated routed experts) x expert width


def get_config(corpus: str = "lookup") -> ConfigDict:
    """`corpus`: 'lookup' (a table of key -> value facts, moe_rl/data/lookup.py), 'skills'
    (letter codes, moe_rl/data/skills.py) or 'facts' (biographies, moe_rl/data/facts.py)."""
    steps = 500
    if corpus == "lookup":
        data = configs.lookup_data(num_keys=8000, num_documents=8000, num_validation=1024)
        steps = 2000
    elif corpus == "skills":
        data = configs.skills_data(num_skills=36, zipf=0.0, num_documents=9600, num_validation=256)
    elif corpus == "facts":
        data = configs.facts_data(num_people=300, num_documents=9600, num_validation=300)
    else:
        raise ValueError(
            f"experiments/moe_vs_dense.py:{corpus}: expected ':lookup', ':skills' or ':facts'"
        )
    return ConfigDict(
        dict(
            name="moe_vs_dense" if corpus == "lookup" else f"moe_vs_dense_{corpus}",
            recipe="moe_vs_dense",
            seed=0,  # same init seed and data order for both
            init_checkpoint="",
            moe_model=model_config_dict(
                **COMMON,
                intermediate_size=FFN,
                moe_intermediate_size=32,
                n_routed_experts=64,
                n_shared_experts=2,
                num_experts_per_tok=6,
                n_group=1,
                topk_group=1,
                routed_scaling_factor=6.0,  # gates sum to K: each routed expert weighs ~1
                first_k_dense_replace=0,
            ),
            dense_model=model_config_dict(**COMMON, intermediate_size=FFN),
            max_flops_gap=0.05,  # activated FLOPs/token may differ by this fraction (the router)
            data=data,
            train=configs.train(num_steps=steps, seq_len=192, eval_every=25, mtp_weight=0.0),
            optim=configs.optim(warmup_steps=30, end_lr_ratio=1.0),
        )
    )
