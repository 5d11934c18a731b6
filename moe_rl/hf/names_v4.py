"""DeepSeek-V4's tensor names: our parameter paths <-> the tensors `save_pretrained` writes for
transformers' DeepseekV4ForCausalLM (DeepSeek's own checkpoint names; transformers' conversion
mapping renames them to its modules on load, e.g. `attn.wq_a` -> `self_attn.q_a_proj`, and
fuses the per-expert `ffn.experts.{e}.w1/w3` into `mlp.experts.gate_up_proj`)."""

from __future__ import annotations

from moe_rl.hf.rule import Rule

# Below `model.layers.{i}.`: attention (with the compressed layers' compressor and the CSA
# layers' lightning indexer), mHC, norms, MoE (w1 gate, w3 up, w2 down, as DeepSeek names them).
_LAYER = {
    "input_layernorm/scale": Rule("attn_norm.weight", "copy"),
    "post_attention_layernorm/scale": Rule("ffn_norm.weight", "copy"),
    "attn/q_a_proj": Rule("attn.wq_a.weight"),
    "attn/q_a_norm/scale": Rule("attn.q_norm.weight", "copy"),
    "attn/q_b_proj": Rule("attn.wq_b.weight"),
    "attn/kv_proj": Rule("attn.wkv.weight"),
    "attn/kv_norm/scale": Rule("attn.norm.weight", "copy"),
    "attn/sinks": Rule("attn.attn_sink", "copy"),
    "attn/o_a_proj": Rule("attn.wo_a.weight", "grouped"),
    "attn/o_b_proj": Rule("attn.wo_b.weight", in_dims=2),
    "attn/compressor/kv_proj": Rule("attn.compressor.wkv.weight"),
    "attn/compressor/gate_proj": Rule("attn.compressor.wgate.weight"),
    "attn/compressor/position_bias": Rule("attn.compressor.ape", "copy"),
    "attn/compressor/kv_norm/scale": Rule("attn.compressor.norm.weight", "copy"),
    "attn/indexer/kv_proj": Rule("attn.indexer.compressor.wkv.weight"),
    "attn/indexer/gate_proj": Rule("attn.indexer.compressor.wgate.weight"),
    "attn/indexer/position_bias": Rule("attn.indexer.compressor.ape", "copy"),
    "attn/indexer/kv_norm/scale": Rule("attn.indexer.compressor.norm.weight", "copy"),
    "attn/indexer/q_b_proj": Rule("attn.indexer.wq_b.weight"),
    "attn/indexer/weights_proj": Rule("attn.indexer.weights_proj.weight"),
    "mlp/router": Rule("ffn.gate.weight"),
    "mlp/bias": Rule("ffn.gate.bias", "copy"),  # moe_bias state (e_score_correction_bias)
    "mlp/tid2eid": Rule("ffn.gate.tid2eid", "index"),  # moe_hash state, stored int64
}
for _ours, _w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
    _LAYER[f"mlp/experts_{_ours}"] = Rule(f"ffn.experts.{{e}}.{_w}.weight")
    _LAYER[f"mlp/shared_experts/{_ours}"] = Rule(f"ffn.shared_experts.{_w}.weight")
for _ours, _theirs in (("attn_hc", "hc_attn"), ("ffn_hc", "hc_ffn")):
    _LAYER[f"{_ours}/fn"] = Rule(f"{_theirs}_fn")  # torch [(2 + n) n, n D]: ours transposed
    _LAYER[f"{_ours}/base"] = Rule(f"{_theirs}_base", "copy")
    _LAYER[f"{_ours}/scale"] = Rule(f"{_theirs}_scale", "copy")

# Outside the layers (as save_pretrained writes them: `head.weight`, `model.*` otherwise).
TOP = {
    "embed": Rule("model.embed_tokens.weight", "copy"),
    "final_norm": Rule("model.norm.weight", "copy"),
    "lm_head": Rule("head.weight"),
    "hc_head/fn": Rule("model.hc_head.hc_fn"),
    "hc_head/base": Rule("model.hc_head.hc_base", "copy"),
    "hc_head/scale": Rule("model.hc_head.hc_scale", "copy"),
}


def layer_rule(sub: str) -> Rule:
    """The rule of a V4 decoder-layer parameter path (below the layer); KeyError if none."""
    return _LAYER[sub]
