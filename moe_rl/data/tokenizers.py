"""Tokenizers with one small interface: the embedded byte-level default and a Hugging Face adapter.

Both expose `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `chat_template`, `encode(text,
add_bos=, add_eos=) -> list[int]` and `decode(ids) -> str`. `decode` drops special tokens and
decodes everything else it is given: stopping at EOS is the sampler's job, not the tokenizer's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Protocol

import tokenizers


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int | None  # None: the tokenizer has no BOS (e.g. Qwen); add_bos is then a no-op
    eos_id: int
    chat_template: str | None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past three special ids: PAD=0, BOS=1, EOS=2, byte b -> b + 3.

    The vocabulary is rounded up from 259 to 264, a multiple of 8 (friendlier matmul shapes);
    ids 259..263 are unused and, like the special ids, skipped by `decode`.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    offset = 3
    vocab_size = 264
    chat_template = None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes of the non-special ids as UTF-8; broken sequences become U+FFFD."""
        data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.offset + 256)
        return data.decode("utf-8", errors="replace")


def _token_content(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


# Used only when no tokenizer_config.json names the special tokens.
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<bos>", "[CLS]")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<|endoftext|>", "<eos>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<｜▁pad▁｜>")


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (the `tokenizers` package) behind the same interface.

    Special tokens come from a `tokenizer_config.json` beside the file (`bos_token`,
    `eos_token`, `pad_token`, `chat_template`; also `chat_template.jinja`), else from common
    token names. Without a pad token, PAD falls back to EOS: padding is told apart by segment
    id 0, never by its token id.
    """

    def __init__(self, path: str):
        folder, file = path, os.path.join(path, "tokenizer.json")
        if not os.path.isdir(path):
            folder, file = os.path.dirname(path), path
        self.path = file
        try:
            self._tok = tokenizers.Tokenizer.from_file(file)
        except Exception as e:  # the tokenizers library says only "expected value at line 1"
            raise ValueError(
                f"{file} is not a readable tokenizer ({' '.join(str(e).split())}); it may be "
                "truncated by a killed run: delete it (a pretraining run learns it again)"
            ) from None
        config = {}
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config_path):
            try:
                with open(config_path) as f:
                    config = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{config_path} is not JSON ({e}); it may be truncated: delete it or fix it"
                ) from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._special_id(config.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._special_id(config.get("eos_token"), _EOS_NAMES)
        if self.eos_id is None:
            raise ValueError(f"{file}: no EOS token found (set eos_token in tokenizer_config.json)")
        pad_id = self._special_id(config.get("pad_token"), _PAD_NAMES)
        self.pad_id = self.eos_id if pad_id is None else pad_id
        self.chat_template = _chat_template(config, folder)

    def _special_id(self, configured, names: Sequence[str]) -> int | None:
        content = _token_content(configured)
        if content is not None:
            token_id = self._tok.token_to_id(content)
            if token_id is None:
                raise ValueError(f"{self.path}: special token {content!r} is not in the vocabulary")
            return token_id
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        bos = [self.bos_id] if add_bos and self.bos_id is not None else []
        return bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _chat_template(config: dict, folder: str) -> str | None:
    """The chat template string: config field (a string or a list of named templates) or file."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    jinja = os.path.join(folder, "chat_template.jinja")
    if template is None and os.path.exists(jinja):
        with open(jinja) as f:
            template = f.read()
    return template


NUMBERS = ("split", "whole", "spaced")  # train_bpe's ways with numbers


def train_bpe(
    texts: Iterable[str], vocab_size: int, folder: str, numbers: str = "split"
) -> HFTokenizer:
    """Trains a byte-level BPE tokenizer on `texts` and saves it as a Hugging Face folder.

    `numbers`: 'split', digits one by one (as Llama does: numbers stay readable digit by
    digit); 'whole', a run of digits is one piece that BPE may merge whole, apart from the
    space before it (a frequent number becomes one token, " 12" two: " " and "12"); 'spaced',
    GPT-2's pre-tokenization, the space joined to the word or number after it (" 12" one token,
    so a Countdown try of ~36 'whole' tokens takes ~25). With 'whole' and 'spaced' two equal
    numbers are two equal tokens. PAD, BOS and EOS are ids 0, 1, 2 ("<pad>", "<s>", "</s>"); any
    UTF-8 text round-trips. Deterministic for the same texts in the same order.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if numbers not in NUMBERS:
        raise ValueError(f"numbers={numbers!r}; allowed: {NUMBERS}")
    tok = tokenizers.Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if numbers == "spaced":  # ByteLevel's own regex: ' ?\p{N}+' keeps the space
        tok.pre_tokenizer = byte_level
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=numbers == "split"), byte_level]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return HFTokenizer(folder)


def get_tokenizer(name_or_path: str) -> Tokenizer:
    """'byte' -> ByteTokenizer; a folder holding tokenizer.json, or the file -> HFTokenizer."""
    if name_or_path == "byte":
        return ByteTokenizer()
    if os.path.isfile(os.path.join(name_or_path, "tokenizer.json")) or (
        os.path.isfile(name_or_path) and name_or_path.endswith(".json")
    ):
        return HFTokenizer(name_or_path)
    raise ValueError(
        f"Unknown tokenizer {name_or_path!r}: use 'byte', a folder containing tokenizer.json, "
        "or the path of a tokenizer.json file."
    )
