"""Hugging Face checkpoints in and out: DeepSeek-V4, DeepSeek-V3/V3.2/V2 (MLA + DeepSeekMoE),
Qwen2, Llama.

A Hugging Face model folder (config.json + *.safetensors + tokenizer.json) can stand wherever
a run reads a model (`config.init_checkpoint`, `config.checkpoint`):

    cfg = hf.model_config(folder)                           # config.json -> ModelConfig
    params, state = hf.load_params(folder, cfg, shardings)  # safetensors -> our pytrees
    hf.save_pretrained(out, cfg, params, state, tokenizer)  # and back, for transformers

Conventions mapped exactly:
- Linear weights are [out, in] in torch, [in, ...heads] here: transposed, then reshaped.
- Routed experts `mlp.experts.{j}.*_proj` are stacked on our leading expert axis; the router
  `mlp.gate.weight` is [E, D]; DeepSeek-V3's `e_score_correction_bias` is our `moe_bias`
  state (selection only, never the gate values), so balancing continues from it.
- RoPE: DeepSeek rotates interleaved pairs (x0, x1), (x2, x3)... (`rope_interleave`, default
  true in V3; always in V2's complex form); Qwen2/Llama rotate halves (x_i, x_{i+d/2}). Our
  `rope_interleave` selects the same rotation, so no weight is permuted.
- YaRN: `rope_scaling`/`rope_parameters` of type yarn with DeepSeek's mscale/mscale_all_dim;
  without mscale_all_dim transformers ignores mscale, and so do we.
- DeepSeek-V3.2 is V3 with sparse attention: the lightning indexer's `self_attn.indexer.*`
  (wq_b, wk, k_norm with its bias, weights_proj) is our `attn/indexer`; `index_topk`,
  `index_n_heads`, `index_head_dim` keep their names; `mlp_layer_types` must be dense layers
  then MoE ones (our first_k_dense_replace).
- Multi-token prediction: DeepSeek-V3's MTP module is stored as extra layers after the last
  one (`model.layers.{L+k-1}`: enorm, hnorm, eh_proj acting on [emb; h], shared_head.norm).
  It is read when present (transformers drops it, so its folders have none) and written for
  DeepseekV3 exports.
- DeepSeek-V4 (`DeepseekV4ForCausalLM`, config_v4.py / names_v4.py): tensors carry the names
  transformers' `save_pretrained` writes (DeepSeek's: `attn.wq_a`, `attn.compressor.ape`,
  `attn.indexer.compressor.wkv`, `attn.attn_sink`, `hc_attn_fn`, `ffn.experts.{e}.w1/w3/w2`,
  `head.weight`, `model.hc_head.hc_fn`...; transformers renames them on load and fuses the
  experts into `gate_up_proj` [E, 2F, D] / `down_proj`). The grouped `wo_a` [G * o_lora_rank,
  H * head_dim / G] is our [G, in, out]; mHC's `fn` [(2 + n) n, n D] is transposed;
  `ffn.gate.bias` is our `moe_bias` state and the hash layers' `ffn.gate.tid2eid` (int64) our
  `moe_hash` state (int32). `rope_parameters` is {"main": sliding layers, "compress":
  compressed ones (YaRN at attention_factor 1)}. Every layer is MoE with one shared expert
  (first_k_dense_replace 0), and there is no MTP (transformers builds none).

Loading streams tensor by tensor: every parameter is built by `jax.make_array_from_callback`
for the slices its devices hold, reading only the stored tensors those slices cover (an expert
shard reads only its experts, a slice of a scanned stack only its layers), cast to the
configured `model.param_dtype`. Missing, unexpected or misshapen tensors are one ValueError
that names each of them, raised before anything is read.

One idea per file: config.py (config.json <-> ModelConfig; V4's in config_v4.py), names.py
(tensor names and layouts; V4's in names_v4.py, a tensor's rule in rule.py), reader.py (the
safetensors files of a folder), load.py (streamed, sharded loading), save.py (export).
"""

from moe_rl.hf.config import (
    ARCHITECTURES,
    HARMLESS_FIELDS,
    NON_WEIGHTS,
    READ_FIELDS,
    RUNTIME_FIELDS,
    _fields_of,
    architecture_fields,
    hf_config,
    is_hf_folder,
    model_block,
    model_config,
    read_config,
    with_hf_model,
)
from moe_rl.hf.load import check_tensors, load_params, load_pretrained
from moe_rl.hf.names import Placement, Rule, placements
from moe_rl.hf.reader import _Reader
from moe_rl.hf.save import save_pretrained

__all__ = [
    "ARCHITECTURES",
    "HARMLESS_FIELDS",
    "NON_WEIGHTS",
    "READ_FIELDS",
    "RUNTIME_FIELDS",
    "Placement",
    "Rule",
    "_Reader",
    "_fields_of",
    "architecture_fields",
    "check_tensors",
    "hf_config",
    "is_hf_folder",
    "load_params",
    "load_pretrained",
    "model_block",
    "model_config",
    "placements",
    "read_config",
    "save_pretrained",
    "with_hf_model",
]
