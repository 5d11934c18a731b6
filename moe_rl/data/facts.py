"""The embedded knowledge corpus: short biographies of N generated people, from a seed.

Why: on text of fixed entropy (the arithmetic corpus) a small model is limited by compute, and
an MoE's extra parameters buy little. Facts are where parameters pay: language models store
about 2 bits of knowledge per parameter, and MoE models store close to what their *total*
parameters allow (Allen-Zhu & Li 2024, "Physics of Language Models 3.3"). This corpus follows
their bioS data: each person has a unique name and five attributes drawn from fixed lists

    birth date (12 x 28 x 50), birth city (200), university (100), major (50), employer (200)

about 42 bits a person, and every document renders one person's facts anew: one of a few
paraphrased templates per attribute, the sentences in a random order, the full name first and
a pronoun after. The training split renders each person `num_train / num_people` times; the
validation split renders the same people with another random stream: held-out *renderings* of
the same facts (a rendering may repeat one seen in training by chance, its text rarely does).
A loss on the attribute values of those renderings (the measured kinds of their spans, see
`labelled`) measures how much of the knowledge a model has stored and can recall in a new
phrasing; the names and template words are the rest of the text.

The lists are pronounceable made-up words from fixed syllables, the same for every seed; only
the people and the renderings depend on the seed. Documents are ~150 bytes of ASCII.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from moe_rl.data import labelled
from moe_rl.data.draws import Random
from moe_rl.data.labelled import Document

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")
# Token kinds (labelled.py): the attributes' values (measured), the person's name, and the rest
# (template words, punctuation, pronouns).
KINDS = (*ATTRIBUTES, "name", "other")
MEASURED = len(ATTRIBUTES)

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip
YEARS = tuple(range(1950, 2000))
DAYS = tuple(range(1, 29))


def _words(heads: str, tails: str, n: int, seed: int) -> tuple[str, ...]:
    """`n` distinct words head+tail in a fixed shuffled order (seeded, not the corpus seed)."""
    combos = [h + t for h, t in itertools.product(heads.split(), tails.split())]
    combos = sorted(set(combos))
    if len(combos) < n:
        raise ValueError(f"{len(combos)} combinations < {n} words")
    order = np.random.default_rng(seed).permutation(len(combos))[:n]
    return tuple(combos[i] for i in order)


FIRST_NAMES = _words(
    "Al Bel Cor Da El Fen Gar Hal Is Jo Ka Le Mar Ne Or Pa Ro Sa Ta Vi",
    "an ina o ric ela is us eth ora en",
    150,
    1,
)
LAST_NAMES = _words(
    "Ash Black Brook Carr Dun Fair Glen Hart Kings Lang Mor North Pem Red Stan Thorn Wes Yar",
    "by dale field ford ham ley man ridge ton well wood worth",
    200,
    2,
)
CITIES = _words(
    "Bel Cal Dor Est Fal Gran Hol Ivy Kel Lor Mil Nor Ost Pel Quin Ros Sil Tor Val Wen",
    "burg haven mont port stead vale wick mouth field ton",
    200,
    3,
)
UNIVERSITIES = tuple(
    f"{w} University"
    for w in _words("Ar Bra Cel Dru Ely Fro Har Lin Mer Pra Sel Ty",
                    "dell more ton wyn cas sted gate lin mar", 100, 4)
)  # fmt: skip
MAJORS = ("physics", "chemistry", "biology", "botany", "geology", "astronomy", "mathematics",
          "statistics", "economics", "history", "philosophy", "linguistics", "law", "medicine",
          "nursing", "pharmacy", "architecture", "music", "painting", "sculpture", "dance",
          "theatre", "film", "journalism", "literature", "poetry", "sociology", "psychology",
          "anthropology", "archaeology", "geography", "ecology", "zoology", "genetics",
          "neuroscience", "robotics", "aerospace", "mechanics", "electronics", "computing",
          "agriculture", "forestry", "oceanography", "meteorology", "accounting", "finance",
          "marketing", "education", "theology", "design")  # fmt: skip
EMPLOYERS = tuple(
    f"{w} {s}"
    for w, s in zip(
        _words("Ac Bry Cy Dex Ev Fyn Gor Hex Jul Kov Lux Myr Nov Ox Pyx Qua Rex Syl Tex Vor",
               "al ane ex ia on ora um is ar ix", 200, 5),
        itertools.cycle(("Labs", "Corp", "Systems", "Foods", "Motors")),
    )
)  # fmt: skip
VALUES = {
    "birth_city": CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": EMPLOYERS,
}

# One sentence per attribute: who ('s': the subject, 's's possessive) + words + value + ".".
# The subject is the full name in the first sentence, the pronoun after.
TEMPLATES = {
    "birth_date": (("s", " was born on "), ("p", " birthday is "),
                   ("s", " came into the world on ")),
    "birth_city": (("s", " was born in "), ("s", " grew up in "), ("p", " hometown is "),
                   ("s", " comes from ")),
    "university": (("s", " studied at "), ("s", " graduated from "), ("s", " attended ")),
    "major": (("s", " majored in "), ("p", " field of study was "), ("s", " took a degree in ")),
    "employer": (("s", " works for "), ("s", " is employed by "), ("s", " has a job at "),
                 ("p", " employer is ")),
}  # fmt: skip
PRONOUNS = (("He", "His"), ("She", "Her"))


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    pronoun: int  # index into PRONOUNS
    values: dict[str, str]  # attribute -> its value as written


def _date(rng: Random) -> str:
    return f"{MONTHS[rng.below(12)]} {DAYS[rng.below(len(DAYS))]}, {YEARS[rng.below(len(YEARS))]}"


def people(num: int, seed: int) -> list[Person]:
    """`num` people with distinct names and random attribute values."""
    if not 0 < num <= len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"num_people={num} must be in [1, {len(FIRST_NAMES) * len(LAST_NAMES)}]")
    rng = Random([seed, 0])
    names = np.random.default_rng([seed, 1]).choice(
        len(FIRST_NAMES) * len(LAST_NAMES), size=num, replace=False
    )
    out = []
    for i in names.tolist():
        values = {"birth_date": _date(rng)}
        values.update({a: v[rng.below(len(v))] for a, v in VALUES.items()})
        name = f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}"
        out.append(Person(name, rng.below(2), values))
    return out


def render(person: Person, index: int, rng: Random) -> Document:
    """One document: a template per attribute, the sentences shuffled; the first sentence
    names the person, the others use the pronoun."""
    order = list(ATTRIBUTES)
    for i in range(len(order) - 1, 0, -1):  # Fisher-Yates with our block-buffered draws
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    subject, possessive = PRONOUNS[person.pronoun]
    pieces: list[tuple[int, str]] = []  # (kind, text)
    other = KINDS.index("other")
    for n, attribute in enumerate(order):
        form, words = TEMPLATES[attribute][rng.below(len(TEMPLATES[attribute]))]
        if n == 0:
            pieces.append((KINDS.index("name"), person.name))
            words = ("'s" if form == "p" else "") + words
        else:
            pieces.append((other, " " + (subject if form == "s" else possessive)))
        pieces += [(other, words), (ATTRIBUTES.index(attribute), person.values[attribute])]
        pieces.append((other, "."))
    return labelled.from_pieces(pieces, index)


def documents(num: int, num_people: int, seed: int, split: str) -> Iterator[Document]:
    """Document i renders person i % num_people; 'train' and 'validation' draw the renderings
    from different random streams (same people: the facts are the same)."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'validation'")
    folks = people(num_people, seed)
    rng = Random([seed, 2 if split == "train" else 3])
    for i in range(num):
        yield render(folks[i % num_people], i % num_people, rng)


def mean_bits_per_person() -> float:
    """Entropy of one person's attribute values in bits (what a model could store per person)."""
    sizes = [12 * len(DAYS) * len(YEARS), *(len(v) for v in VALUES.values())]
    return float(sum(np.log2(sizes)))


def value_lists() -> dict[str, Sequence[str]]:
    """The fixed lists, by attribute (dates listed by their parts)."""
    return {"birth_date": (MONTHS, DAYS, YEARS), **VALUES}
