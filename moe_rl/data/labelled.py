"""Documents whose bytes are labelled by kind: the embedded corpora built to measure what a
model has learned (`facts`: biographies, `skills`: letter codes).

Each byte of a document's text belongs to one span (kind, start, end). The first kinds of a
corpus are its *measured* kinds (attribute values, coded letters): a validation loss on the
tokens of those kinds measures stored knowledge or a learned skill, while the rest of the text
(names, templates, random inputs) is context.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Document:
    """text; entity: the person (facts) or -1; spans: (kind, start, end) byte offsets that
    tile the text, in order."""

    text: str
    entity: int
    spans: tuple[tuple[int, int, int], ...]


def from_pieces(pieces: list[tuple[int, str]], entity: int = -1) -> Document:
    """A document from (kind, text) pieces in order; adjacent pieces of one kind share a span."""
    text, spans = "", []
    for kind, piece in pieces:
        if not piece:
            continue
        if spans and spans[-1][0] == kind:
            spans[-1] = (kind, spans[-1][1], len(text) + len(piece))
        else:
            spans.append((kind, len(text), len(text) + len(piece)))
        text += piece
    return Document(text, entity, tuple(spans))


def token_kinds(doc: Document, num_tokens: int, other: int) -> np.ndarray:
    """Kind of each byte-level token of BOS + text + EOS (one token a byte, the BOS first):
    the kind of the byte it is; BOS and EOS are `other`."""
    kinds = np.full(num_tokens, other, np.int32)
    for kind, start, end in doc.spans:
        kinds[1 + start : 1 + end] = kind
    return kinds
