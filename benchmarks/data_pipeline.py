"""What the hand-written data pipeline costs the host: seconds per packed batch of
`packing.PackedBatches` (read documents from the array_record corpus, tokenize, pack with segment
ids and positions), beside the train step of the same shape, as a share of it.

    python benchmarks/data_pipeline.py [--batches=200] [--steps=10]

The corpus is the embedded R1-Zero one (`mix='r1'`, prepared on first use), tokenized by the
byte tokenizer and by a BPE of 384 tokens learned on its first 20,000 documents (what
experiments/r1_zero.py's base uses). The step is benchmarks/mfu.py's (the jitted
`lm.make_train_step` of the tiny MoE without MTP, state donated). The batch is made on the host
between steps, synchronously: its share of the step is what a prefetching loader (grain's
worker threads) could hide. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from moe_rl import perf
from moe_rl.data import corpus, packing, tokenizers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mfu import pretrain_step  # noqa: E402  (benchmarks/mfu.py)

SHAPES = ((8, 256), (32, 1024))


def batch_seconds(source, tokenizer, batch: int, seq_len: int, n: int) -> float:
    """Mean seconds of next() over n batches after the first: the mean, not the median, since
    documents are read and tokenized in blocks (`read_block`) whose cost lands on a few batches."""
    it = packing.PackedBatches(source, tokenizer, batch, seq_len, seed=0)
    next(it)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return (time.perf_counter() - start) / n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    print(perf.machine_description())
    source = corpus.load_text_dataset(
        corpus.ARITHMETIC, "train", config=corpus.arithmetic_config(mix="r1")
    )
    folder = tempfile.mkdtemp()
    texts = (source[i] for i in range(20_000))
    toks = {
        "byte": tokenizers.get_tokenizer("byte"),
        "bpe:384": tokenizers.train_bpe(texts, 384, folder),
    }
    print(f"corpus: {len(source):,} documents (r1 mix); host: mean of {a.batches} batches\n")
    print("| batch x length | tokenizer | host ms / batch | train step ms | host / step |")
    print("| --- | --- | ---: | ---: | ---: |")
    for batch, seq_len in SHAPES:
        step = pretrain_step(
            "tiny", batch, seq_len, a.steps, vocab_size=384, num_nextn_predict_layers=0
        )
        for name, tok in toks.items():
            host = batch_seconds(source, tok, batch, seq_len, a.batches)
            print(
                f"| {batch} x {seq_len} | {name} | {1000 * host:.2f} "
                f"| {1000 * step['seconds']:.1f} | {host / step['seconds']:.1%} |"
            )


if __name__ == "__main__":
    main()
