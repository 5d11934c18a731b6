"""The embedded lookup-table corpus: one fact per document, a key and its value.

Why: an MoE's extra parameters pay where a model must store many independent facts
(Allen-Zhu & Li 2024, "Physics of Language Models 3.3": about 2 bits per parameter, and MoE
models store close to what their *total* parameters allow). The biographies of `facts` hold
such facts, but most of their bytes are names and template words that a dense model learns as
fast as an MoE; the letter codes of `skills` are 36 small tables, which a dense FFN of this
size holds too. Here the whole corpus is knowledge: a table of `num_keys` random facts

    BOS k1 k2 v EOS          e.g. "Q7m": the key "Q7" has the value "m"

a key of two printable ASCII characters (94 x 94 possible keys, `num_keys` of them drawn
without replacement), its value one of the 26 lowercase letters, drawn uniformly and
independently: log2(26) = 4.7 bits a key, nothing to generalise. Until a model has stored a
key's value its loss on that value is log 26 = 3.26 nats; the loss on the value tokens of the
validation documents (the measured kinds) says how much of the table it holds.

Document i of the training split is key i % num_keys: every key equally often, each epoch in
the packer's shuffled order (38 documents fill a row of 192 tokens; attention stays within a
document). The validation split is keys of the same table in another random order: its
documents are training documents (the facts are the point: a fact seen is what is measured),
as the validation renderings of `facts` are held-out phrasings of facts seen in training.

The measured kinds group the values by the class of their key's first character (digit,
uppercase, lowercase, other symbol): the expert specialisation figure shows whether the router
sorts keys by it. Only the table depends on the seed.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import numpy as np

from moe_rl.data import labelled
from moe_rl.data.labelled import Document

ALPHABET = "".join(chr(c) for c in range(33, 127))  # the 94 printable ASCII characters but space
VALUES = string.ascii_lowercase
CLASSES = ("digit", "upper", "lower", "symbol")  # of a key's first character
# Token kinds (labelled.py): the values, by the class of their key's first character (measured),
# the key characters and the rest (BOS, EOS).
KINDS = (*(f"value ({c} key)" for c in CLASSES), "key", "other")
MEASURED = len(CLASSES)
MAX_KEYS = len(ALPHABET) ** 2


def key_class(key: str) -> int:
    """Index in CLASSES of the class of the key's first character."""
    c = key[0]
    if c.isdigit():
        return 0
    if c.isupper():
        return 1
    if c.islower():
        return 2
    return 3


def table(num_keys: int, seed: int) -> tuple[list[str], np.ndarray]:
    """The keys (distinct, in a seeded random order) and the index in VALUES of each's value."""
    if not 1 <= num_keys <= MAX_KEYS:
        raise ValueError(f"num_keys={num_keys} must be in [1, {MAX_KEYS}]")
    rng = np.random.default_rng([seed, 0])
    n = len(ALPHABET)
    codes = rng.choice(MAX_KEYS, num_keys, replace=False)
    keys = [ALPHABET[i // n] + ALPHABET[i % n] for i in codes.tolist()]
    return keys, rng.integers(0, len(VALUES), num_keys)


def documents(num: int, num_keys: int, seed: int, split: str) -> Iterator[Document]:
    """`num` documents of one fact each: key i % num_keys (training) or the keys in another
    seeded random order, cycled (validation)."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'validation'")
    keys, values = table(num_keys, seed)
    if split == "train":
        order = np.arange(num_keys)
    else:
        order = np.random.default_rng([seed, 2]).permutation(num_keys)
    key_kind = KINDS.index("key")
    for i in range(num):
        k = int(order[i % num_keys])
        pieces = [(key_kind, keys[k]), (key_class(keys[k]), VALUES[values[k]])]
        yield labelled.from_pieces(pieces)
