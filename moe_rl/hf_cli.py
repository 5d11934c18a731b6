"""Hugging Face folders from the command line.

Make a tiny random Hugging Face model (built by `transformers`, with a BPE tokenizer learned on
the arithmetic corpus and a chat template), e.g. to try `--config.init_checkpoint=<folder>`:

    python -m moe_rl.hf_cli tiny --out=/tmp/tiny_qwen2 [--arch=qwen2|llama|deepseek_v3|deepseek_v2]

Export a moe_rl checkpoint (the model block of its experiment config) for `transformers`:

    python -m moe_rl.hf_cli export --config=experiments/r1_zero.py \
        --checkpoint=runs/r1_zero/grpo --tokenizer=runs/r1_zero/base/tokenizer --out=hf/r1_zero

`tiny` needs the `hf` extra (torch + transformers); `export` needs neither.
"""

from __future__ import annotations

import argparse
import os
import runpy

import jax
import ml_collections

TINY_ARCHS = ("qwen2", "llama", "deepseek_v3", "deepseek_v2")
# A ChatML template (Qwen2's format) so the 'chat' prompt template works with the tiny model.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(folder: str, vocab_size: int = 384, documents: int = 2000):
    """A BPE learned on arithmetic documents (digits split), with ChatML's special tokens and
    chat template in tokenizer_config.json."""
    import json

    from moe_rl.data import arithmetic, draws, tokenizers

    rng = draws.Random(0)
    texts = [arithmetic.document(rng, "r1") for _ in range(documents)]
    tokenizers.train_bpe(texts, vocab_size, folder)
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["chat_template"] = CHAT_TEMPLATE
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return tokenizers.HFTokenizer(folder)


def tiny_model(arch: str, vocab_size: int, seed: int = 0):
    """A small random `transformers` model of `arch` (~0.2M parameters)."""
    try:
        import torch
        import transformers
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"moe_rl.hf_cli tiny needs {e.name}, which the 'hf' extra installs: "
            "pip install torch==2.13.0 (the CPU build) -e '.[hf]'"
        ) from None

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    mla = dict(
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        num_key_value_heads=4,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
    )
    if arch == "qwen2":
        return transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**common, num_key_value_heads=2)
        )
    if arch == "llama":
        config = transformers.LlamaConfig(**common, num_key_value_heads=2, head_dim=16)
        return transformers.LlamaForCausalLM(config)
    if arch == "deepseek_v3":
        config = transformers.DeepseekV3Config(
            **common, **mla, q_lora_rank=32, n_group=4, topk_group=2
        )
        return transformers.DeepseekV3ForCausalLM(config)
    if arch == "deepseek_v2":
        config = transformers.DeepseekV2Config(**common, **mla, q_lora_rank=None)
        return transformers.DeepseekV2ForCausalLM(config)
    raise ValueError(f"--arch={arch!r}; allowed: {TINY_ARCHS}")


def make_tiny(out: str, arch: str = "qwen2", seed: int = 0) -> str:
    """Writes a tiny random Hugging Face model and its tokenizer into `out`."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"--arch={arch!r}; allowed: {TINY_ARCHS}")
    tokenizer = tiny_tokenizer(out)
    model = tiny_model(arch, tokenizer.vocab_size, seed)
    model.config.update(
        dict(
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
    )
    model.save_pretrained(out)
    return out


def export(
    config_path: str,
    checkpoint_dir: str,
    out: str,
    tokenizer: str = "",
    model_key: str = "model",
    mtp: bool = True,
) -> str:
    """The newest checkpoint of a moe_rl workdir as a Hugging Face folder."""
    from moe_rl import evaluate, hf
    from moe_rl.data import tokenizers
    from moe_rl.models.config import ModelConfig

    config = runpy.run_path(config_path)["get_config"]()
    block = config
    for key in model_key.split("."):
        block = block[key]
    cfg = ModelConfig.from_config(block)
    load = ml_collections.ConfigDict(dict(checkpoint=checkpoint_dir, seed=0))
    params, state, source = evaluate.load_model(load, cfg)
    tok = tokenizers.get_tokenizer(tokenizer) if tokenizer else None
    hf.save_pretrained(out, cfg, params, state, tok, mtp=mtp)
    print(f"Exported {source} to {out}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m moe_rl.hf_cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tiny", help="a tiny random transformers model with a tokenizer")
    t.add_argument("--out", required=True)
    t.add_argument("--arch", default="qwen2", choices=TINY_ARCHS)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("export", help="a moe_rl checkpoint as a Hugging Face folder")
    e.add_argument("--config", required=True, help="the experiment config file of the run")
    e.add_argument("--checkpoint", required=True, help="a workdir with checkpoints/")
    e.add_argument("--out", required=True)
    e.add_argument("--tokenizer", default="", help="a folder with the run's tokenizer.json")
    e.add_argument("--model_key", default="model", help="e.g. student.model for distillation")
    e.add_argument("--no_mtp", action="store_true", help="leave the MTP module out (serving)")
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    if args.command == "tiny":
        print(f"Wrote {make_tiny(args.out, args.arch, args.seed)}")
    else:
        export(
            args.config, args.checkpoint, args.out, args.tokenizer, args.model_key, not args.no_mtp
        )


if __name__ == "__main__":
    main()
