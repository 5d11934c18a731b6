"""Packing tokenized documents into fixed [batch, seq_len] rows, and a resumable iterator.

Every batch is a dict of int32 numpy arrays [batch, seq_len]:
  tokens       token ids, `tokenizer.pad_id` on padding;
  segment_ids  1, 2, 3, ... for the pieces of documents within a row, 0 on padding;
  positions    0, 1, 2, ... restarting at every piece;
  loss_mask    (prompt/completion pairs only) 1 on completion tokens and their EOS, else 0.
The train step shifts tokens itself and masks targets by segment, so no targets are stored.

A document is BOS + text + EOS. A document that does not fit in what is left of a row starts
the next row, so documents stay whole; one longer than a row fills the rest of the row and
continues in the next rows, each piece its own segment with positions from 0 (positions stay
below seq_len even for tiny_shakespeare, a single document of a million characters).
Prompt/completion pairs are never split: one longer than a row is cut at the end of the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moe_rl.data.tokenizers import Tokenizer

Example = tuple[np.ndarray, np.ndarray | None]  # token ids, loss mask (None: pretraining text)


def encode_document(tokenizer: Tokenizer, text: str) -> Example:
    """BOS + text + EOS, as int32 ids; no loss mask (every next token is a target)."""
    return np.asarray(tokenizer.encode(text, add_bos=True, add_eos=True), np.int32), None


def encode_pair(tokenizer: Tokenizer, prompt: str, completion: str) -> Example:
    """BOS + prompt + completion + EOS, with a loss mask of 1 on the completion and its EOS."""
    prompt_ids = tokenizer.encode(prompt, add_bos=True)
    completion_ids = tokenizer.encode(completion, add_eos=True)
    ids = np.asarray(prompt_ids + completion_ids, np.int32)
    mask = np.zeros(len(ids), np.int32)
    mask[len(prompt_ids) :] = 1
    return ids, mask


class _Rows:
    """A batch being filled row by row."""

    def __init__(self, num_rows: int, seq_len: int, pad_id: int, with_mask: bool):
        shape = (num_rows, seq_len)
        self.arrays = {
            "tokens": np.full(shape, pad_id, np.int32),
            "segment_ids": np.zeros(shape, np.int32),
            "positions": np.zeros(shape, np.int32),
        }
        if with_mask:
            self.arrays["loss_mask"] = np.zeros(shape, np.int32)
        self.num_rows, self.seq_len = num_rows, seq_len
        self.row = self.used = self.segment = 0

    @property
    def full(self) -> bool:
        return self.row >= self.num_rows

    @property
    def empty(self) -> bool:
        return self.row == 0 and self.used == 0

    def next_row(self) -> None:
        self.row, self.used, self.segment = self.row + 1, 0, 0

    def place(self, ids: np.ndarray, mask: np.ndarray | None, split: bool) -> int:
        """Writes ids (or the head that fits) as one segment; returns how many ids it consumed.

        0: the ids would fit in a fresh row but not in this one, so the row was closed instead.
        split=False consumes all ids even when it keeps only a row's worth (truncation).
        """
        n, room = len(ids), self.seq_len - self.used
        if n > room and self.used and (n <= self.seq_len or not split):
            self.next_row()
            return 0
        take = min(n, room)
        r, cols = self.row, slice(self.used, self.used + take)
        self.segment += 1
        self.arrays["tokens"][r, cols] = ids[:take]
        self.arrays["segment_ids"][r, cols] = self.segment
        self.arrays["positions"][r, cols] = np.arange(take)
        if mask is not None:
            self.arrays["loss_mask"][r, cols] = mask[:take]
        self.used += take
        if self.used == self.seq_len:
            self.next_row()
        return take if split else n


def sft_batch(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Tokenizer,
    seq_len: int,
    num_rows: int | None = None,
    pack: bool = True,
) -> dict[str, np.ndarray]:
    """Rows of prompt/completion pairs with a completion-only loss_mask (SFT, distillation).

    pack=True puts several pairs in a row (separate segments), pack=False one pair per row.
    num_rows fixes the batch size (padding with empty rows, so shapes stay static under jit);
    too many pairs for it is an error. A pair longer than seq_len is cut at seq_len.
    """
    examples = [encode_pair(tokenizer, p, c) for p, c in pairs]
    capacity = len(examples) if num_rows is None else num_rows
    rows = _Rows(capacity, seq_len, tokenizer.pad_id, with_mask=True)
    for ids, mask in examples:
        if rows.used and (not pack or len(ids) > seq_len - rows.used):
            rows.next_row()
        if rows.full:
            raise ValueError(f"{len(pairs)} pairs do not fit in {num_rows} rows of {seq_len}")
        rows.place(ids, mask, split=False)
    used_rows = rows.row + (rows.used > 0)
    if num_rows is None:
        return {k: v[:used_rows] for k, v in rows.arrays.items()}
    return rows.arrays


class PackedBatches:
    """Deterministic, resumable iterator of packed batches over a random-access source.

    Items of `source` are strings (pretraining documents) or (prompt, completion) pairs
    (SFT; batches then carry loss_mask). Each epoch visits the items in a permutation drawn
    from numpy's Generator seeded with (seed, epoch), or in order if shuffle=False; with
    num_shards > 1 this process takes every num_shards-th item of it (one shard per host).
    Infinite unless num_epochs is set; the last batch is then padded with empty rows.

    `get_state()` is a small JSON-serialisable dict (epoch, index into the permutation,
    tokens of that item already emitted): `set_state` on a fresh iterator with the same
    arguments continues with exactly the batches the saved one would have produced.
    """

    def __init__(
        self,
        source: Sequence,
        tokenizer: Tokenizer,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        shard_index: int = 0,
        num_shards: int = 1,
        read_block: int = 256,
    ):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
        if not 0 <= shard_index < num_shards or len(source) < num_shards:
            raise ValueError(
                f"shard {shard_index} of {num_shards} is invalid for {len(source)} items"
            )
        self.source, self.tokenizer = source, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.shard_index, self.num_shards = shard_index, num_shards
        self.read_block = read_block
        self.sft = not isinstance(source[0], str)
        self._epoch = self._index = self._offset = 0
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._block_cache: tuple[int, int, list[Example]] | None = None

    def get_state(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index, "offset": self._offset}

    def set_state(self, state: dict[str, int]) -> None:
        if set(state) != {"epoch", "index", "offset"}:
            raise ValueError(f"Not a PackedBatches state: {state}")
        self._epoch, self._index, self._offset = (
            int(state["epoch"]),
            int(state["index"]),
            int(state["offset"]),
        )

    def _order(self, epoch: int) -> np.ndarray:
        """This shard's item ids for the epoch (cached: a permutation can be large)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            n = len(self.source)
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
            else:
                order = np.arange(n)
            self._order_cache = (epoch, order[self.shard_index :: self.num_shards])
        return self._order_cache[1]

    def _encode(self, item) -> Example:
        if self.sft:
            return encode_pair(self.tokenizer, *item)
        return encode_document(self.tokenizer, item)

    def _example(self, epoch: int, index: int) -> Example:
        """The encoded item at `index` of the epoch's order. Items are read and encoded in
        blocks: one batched read of a TFDS source costs about as much as a few single reads,
        and a long document is encoded once, not once per batch it spans."""
        key, start, block = self._block_cache or (None, 0, [])
        if key != epoch or not start <= index < start + len(block):
            ids = [int(i) for i in self._order(epoch)[index : index + self.read_block]]
            getitems = getattr(self.source, "__getitems__", None)
            items = getitems(ids) if getitems else [self.source[i] for i in ids]
            start, block = index, [self._encode(item) for item in items]
            self._block_cache = (epoch, start, block)
        return block[index - start]

    def __iter__(self) -> PackedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = _Rows(self.batch_size, self.seq_len, self.tokenizer.pad_id, with_mask=self.sft)
        while not rows.full:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                break
            order = self._order(self._epoch)
            if self._index >= len(order):
                self._epoch, self._index, self._offset = self._epoch + 1, 0, 0
                continue
            ids, mask = self._example(self._epoch, self._index)
            rest = slice(self._offset, None)
            self._offset += rows.place(
                ids[rest], None if mask is None else mask[rest], not self.sft
            )
            if self._offset >= len(ids):
                self._index, self._offset = self._index + 1, 0
        if rows.empty:
            raise StopIteration
        return rows.arrays
