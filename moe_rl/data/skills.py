"""The embedded skills corpus: a mixture of many distinct task families, each a letter code.

Why: DeepSeekMoE's case for many fine-grained experts is specialisation: with many distinct
skills in the data, experts can each hold a few, where a dense FFN must hold them all in the
same weights (and the literature finds an MoE's extra parameters pay on knowledge and on many
distinct skills; Allen-Zhu & Li 2024, "Physics of Language Models 3.3"). Here skill k is a
code c_k from the 26 lowercase letters onto its own 13 of them (each of those written by two
plain letters). An entry "Kxy" says that skill K (its marker, an uppercase letter or digit)
turns the plain letter x into the coded letter y = c_K(x); a document is 45 entries with
random skills and random plain letters, separated by spaces (179 bytes):

    Qhb Dme Qoz Avb Dkq Aaf ...

The coded letter depends on the pair (skill, plain letter): each alone only narrows it (the
skill to its 13 letters, the plain letter to the skills' choices). So a model must learn, for
every skill, its table of 26 pairs. Before it can, its attention must bring the marker to the
position of the plain letter (the one that predicts the coded letter): until then a model sits
on a plateau (~2.9 nats on the coded letters: the plain letter used, the skill not), whose
length varies from seed to seed (200 to over 500 steps at the size of experiments/
moe_vs_dense.py). Codes onto 13 letters rather than permutations of all 26 give the skill a
signal of its own (log 26 - log 13 nats) to teach that attention; they did not remove the
plateau. A dense FFN holds all tables as conjunctions of skill and letter in shared weights,
while an MoE can route an entry by its skill and give each expert a few skills' letter maps.
Skills are drawn with Zipf frequencies (skill k with weight 1 / (k + 1)^zipf; 0: uniform).

Validation documents are fresh draws of entries (another random stream): every (skill, letter)
pair also occurs in training, so the loss on their coded letters (the measured kinds, one per
skill) says how much of each skill's table a model has learned. Markers and plain letters are
random (their loss is the rest). Only the codes and the draws depend on the seed.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import numpy as np

from moe_rl.data import labelled
from moe_rl.data.labelled import Document

LETTERS = string.ascii_lowercase
MARKERS = string.ascii_uppercase + string.digits  # skill k is written MARKERS[k]
ENTRIES = 45  # entries per document
OUTPUTS = 13  # the letters each skill's code writes (each by 26 / 13 = 2 plain letters)


def kinds(num_skills: int) -> tuple[str, ...]:
    """Token kinds: the coded letters of each skill (measured: the first num_skills), then the
    skill markers, the plain letters and the rest (spaces, BOS, EOS)."""
    return (*(f"skill {MARKERS[k]}" for k in range(num_skills)), "marker", "plain", "other")


def codes(num_skills: int, seed: int) -> np.ndarray:
    """[num_skills, 26]: code k maps letter i to letter codes[k, i]; each code writes its own
    random OUTPUTS letters, each of them for 26 / OUTPUTS plain letters."""
    if not 1 <= num_skills <= len(MARKERS):
        raise ValueError(f"num_skills={num_skills} must be in [1, {len(MARKERS)}]")
    rng = np.random.default_rng([seed, 0])
    n = len(LETTERS)
    rows = []
    for _ in range(num_skills):
        written = rng.choice(n, OUTPUTS, replace=False)
        rows.append(rng.permutation(np.repeat(written, n // OUTPUTS)))
    return np.stack(rows)


def frequencies(num_skills: int, zipf: float) -> np.ndarray:
    """Probability of each skill: proportional to 1 / (k + 1)^zipf (0: uniform)."""
    if zipf < 0:
        raise ValueError(f"zipf={zipf} must be >= 0")
    weights = 1.0 / np.arange(1, num_skills + 1, dtype=np.float64) ** zipf
    return weights / weights.sum()


def documents(num: int, num_skills: int, zipf: float, seed: int, split: str) -> Iterator[Document]:
    """`num` documents of ENTRIES entries; 'train' and 'validation' draw them from different
    random streams (same codes)."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'validation'")
    table = codes(num_skills, seed)
    p = frequencies(num_skills, zipf)
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    marker, plain, other = num_skills, num_skills + 1, num_skills + 2
    for _ in range(num):
        skills = rng.choice(num_skills, ENTRIES, p=p).tolist()
        letters = rng.integers(0, len(LETTERS), ENTRIES).tolist()
        pieces: list[tuple[int, str]] = []
        for n, (k, x) in enumerate(zip(skills, letters, strict=True)):
            if n:
                pieces.append((other, " "))
            pieces += [(marker, MARKERS[k]), (plain, LETTERS[x]), (k, LETTERS[table[k, x]])]
        yield labelled.from_pieces(pieces)
