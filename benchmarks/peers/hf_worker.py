"""Peer timings with PyTorch: `transformers` generate, one AdamW train step, one TRL GRPO step.

Runs in the TRL environment (benchmarks/peers/setup.sh), on a Hugging Face folder written by
`moe_rl.hf.save_pretrained`; prints one JSON line {"times": [...], ...}: seconds of each timed
step after `--warmup` untimed ones. Called by benchmarks/peers/run.py, alternately with moe_rl.

    python hf_worker.py generate --model DIR --batch 8 --new 32
    python hf_worker.py train --model DIR --batch 8 --seq-len 64
    python hf_worker.py grpo --model DIR --prompts 8 --generations 4 --new 32
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def load(folder: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model


def random_ids(rng, rows: int, length: int) -> torch.Tensor:
    return torch.from_numpy(rng.integers(3, 259, (rows, length)))


def time_generate(args) -> dict:
    """Greedy `generate` of exactly `new` tokens for `batch` prompts of `prompt_len` tokens."""
    model = load(args.model).eval()
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.warmup + args.steps):
        ids = random_ids(rng, args.batch, args.prompt_len)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=args.new,
                min_new_tokens=args.new,
                pad_token_id=0,
            )
        elapsed = time.perf_counter() - start
        assert out.shape == (args.batch, args.prompt_len + args.new), out.shape
        if i >= args.warmup:
            times.append(elapsed)
    return {"times": times}


def time_train(args) -> dict:
    """model(ids, labels=ids).loss, backward, global-norm clipping, AdamW step."""
    model = load(args.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.warmup + args.steps):
        ids = random_ids(rng, args.batch, args.seq_len)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if i >= args.warmup:
            times.append(elapsed)
    return {"times": times, "loss": float(loss)}


def word_tokenizer(vocab_size: int):
    """Token id i <-> word 't<i>' separated by spaces, so a prompt of n words is n tokens and a
    text reward can read the ids back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="t0", eos_token="t263", unk_token="t0"
    )


def even_fraction(ids) -> float:
    """The benchmark's reward (moe_rl uses the same): the fraction of even token ids."""
    ids = list(ids)
    return sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)


def time_grpo(args) -> dict:
    """TRL GRPOTrainer steps: Q prompts x G completions of exactly `new` tokens, one update per
    step over all completions, beta 0.04 (reference model), paper loss ('grpo')."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    with open(os.path.join(args.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tokenizer = word_tokenizer(vocab)
    steps = args.warmup + args.steps
    rng = np.random.default_rng(0)
    prompts = [
        " ".join(f"t{t}" for t in row)
        for row in rng.integers(3, 259, (args.prompts * steps, args.prompt_len))
    ]
    data = Dataset.from_dict({"prompt": prompts})

    def reward(completions, completion_ids, **kwargs):
        return [even_fraction(ids) for ids in completion_ids]

    config = GRPOConfig(
        output_dir=os.path.join(args.workdir, "trl_grpo"),
        per_device_train_batch_size=args.prompts * args.generations,  # counts completions
        gradient_accumulation_steps=1,
        num_generations=args.generations,
        max_completion_length=args.new,
        generation_kwargs={"min_new_tokens": args.new},
        temperature=1.0,
        beta=0.04,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        learning_rate=1e-5,
        max_steps=steps,
        shuffle_dataset=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    trainer = GRPOTrainer(
        model=args.model,  # a folder: with beta > 0 TRL builds the reference from it
        reward_funcs=reward,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return {"times": timer.times[args.warmup :]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=("generate", "train", "grpo"))
    parser.add_argument("--model", required=True, help="Hugging Face folder")
    parser.add_argument("--workdir", default="/tmp/moe_rl_peers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fn = {"generate": time_generate, "train": time_train, "grpo": time_grpo}[args.task]
    out = fn(args)
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
