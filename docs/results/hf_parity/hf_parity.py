"""Our logits against transformers' for each DeepSeek generation, as the parity tests build them.

    python docs/results/hf_parity/hf_parity.py    (needs the hf extra: torch + transformers)

A tiny random transformers model of each family (tests/test_hf.py's DeepseekV3 and DeepseekV32
configs, 12 tokens; tests/test_hf_v4.py's tiny_v4-shaped DeepseekV4, 40 tokens, so compressed
blocks close and the window slides) is saved with `save_pretrained`, loaded with
`moe_rl.hf.load_pretrained`, and run by both on the same random tokens in float32: the largest
absolute logit difference of our full forward and of our cached decode (a short prefill, then
one token at a time). The tests assert < 1e-4; this prints and writes what they measure
(hf_parity.md and .json beside this file).
"""

import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

import transformers  # noqa: E402

import tests.test_hf as v3  # noqa: E402  (the parity tests' models and helpers)
import tests.test_hf_v4 as v4  # noqa: E402
from moe_rl import hf  # noqa: E402
from tests.utils import jitted_forward, make_config  # noqa: E402


def measure(model, tokens, full_fn, decode_fn) -> dict:
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    want = v3.torch_logits(model, tokens)
    cfg, params, state = hf.load_pretrained(folder)
    return {
        "tokens": list(tokens.shape),
        "max |logit|": float(np.abs(want).max()),
        "full forward": float(np.abs(full_fn(cfg, params, state, tokens) - want).max()),
        "cached decode": float(np.abs(decode_fn(cfg, params, state, tokens) - want).max()),
    }


def main() -> dict:
    rows = {}
    for name in ("deepseek_v3", "deepseek_v32"):
        family, kwargs = v3.MODELS[name]
        config = getattr(transformers, f"{family}Config")(**kwargs)
        model = v3.randomize(getattr(transformers, f"{family}ForCausalLM")(config))
        tokens = np.random.default_rng(0).integers(0, v3.COMMON["vocab_size"], (v3.B, v3.L))
        rows[f"{family}ForCausalLM"] = measure(model, tokens, v3.full_logits, v3.decode_logits)
    model = v4.randomize(
        transformers.DeepseekV4ForCausalLM(v4.hf_v4_config(make_config("tiny_v4")))
    )
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (v4.B, v4.L))

    def full(cfg, params, state, tokens):
        return np.asarray(jitted_forward(cfg, mtp=False)(params, state, tokens, v4.positions())[0])

    def decode(cfg, params, state, tokens):
        return np.asarray(
            v4.decode_logits(jitted_forward(cfg, mtp=False), cfg, params, state, tokens)
        )

    rows["DeepseekV4ForCausalLM"] = measure(model, tokens, full, decode)
    lines = [
        f"transformers {transformers.__version__}, float32, CPU; written by "
        "docs/results/hf_parity/hf_parity.py",
        "",
        "| architecture | batch x tokens | max abs logit | full forward max abs diff "
        "| cached decode max abs diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['tokens'][0]} x {r['tokens'][1]} | {r['max |logit|']:.2f} | "
            f"{r['full forward']:.1e} | {r['cached decode']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(HERE, "hf_parity.md"), "w") as f:
        f.write(text)
    with open(os.path.join(HERE, "hf_parity.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
