"""Model config: presets are valid, overrides work, inconsistent values name their fields."""

import pytest

from moe_rl.models import config as model_config
from moe_rl.models.config import ModelConfig, preset


@pytest.mark.parametrize("name", sorted(model_config.PRESETS))
def test_presets_validate(name):
    cfg = ModelConfig.from_config(preset(name))
    assert cfg.num_dense_layers + cfg.num_moe_layers == cfg.num_hidden_layers


def test_q_lora_rank_placeholder_accepts_int_and_none():
    cd = preset("tiny")
    cd.q_lora_rank = None
    assert ModelConfig.from_config(cd).q_lora_rank is None
    cd.q_lora_rank = 16
    assert ModelConfig.from_config(cd).q_lora_rank == 16


def test_yarn_from_dict():
    cd = preset("tiny")
    cd.rope_scaling.type = "yarn"
    cd.rope_scaling.factor = 4.0
    cfg = ModelConfig.from_config(cd)
    assert cfg.rope_scaling.factor == 4.0
    assert ModelConfig.from_config(preset("tiny")).rope_scaling is None


@pytest.mark.parametrize(
    "overrides, fields",
    [
        (dict(num_experts_per_tok=5), ["num_experts_per_tok", "topk_group"]),  # 2 groups x 2
        (dict(n_routed_experts=10), ["n_routed_experts", "n_group"]),
        (dict(topk_group=5), ["topk_group", "n_group"]),
        (dict(n_group=8), ["n_group"]),  # 1 expert per group: no top-2 group score
        (dict(scoring_func="relu"), ["scoring_func", "sigmoid"]),
        (dict(attention="mha"), ["attention", "gqa"]),
        (dict(moe_impl="magic"), ["moe_impl", "sparse"]),
        (dict(qk_rope_head_dim=7), ["qk_rope_head_dim"]),
        (dict(first_k_dense_replace=9), ["first_k_dense_replace", "num_hidden_layers"]),
        (dict(dtype="float64"), ["dtype", "bfloat16"]),
        (dict(q_lora_rank=-3), ["q_lora_rank"]),
    ],
)
def test_inconsistent_values_name_fields(overrides, fields):
    with pytest.raises(ValueError) as e:
        ModelConfig.from_config(preset("tiny", **overrides))
    for field in fields:
        assert field in str(e.value)


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig.from_config(preset("tiny_dense", num_key_value_heads=3))


def test_unknown_field_and_rope_type():
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.from_config({**preset("tiny").to_dict(), "colour": 1})
    cd = preset("tiny")
    cd.rope_scaling.type = "ntk"
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_config(cd)


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny"):
        preset("huge")
