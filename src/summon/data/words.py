"""Words of raw text for tagging, and BIO tags turned into entity spans with character offsets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_WORDS = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Words of raw text for tagging, CoNLL style: runs of letters and digits (joined by ``'`` or ``-``)
    and each punctuation mark on its own, so ``"Paris, EU-wide"`` gives ``Paris , EU-wide``.

    A simple regular expression, not a trained tokenizer: abbreviations such as ``U.S.`` come out as
    ``U . S .``. Pass pre-split word lists to :meth:`Predictor.predict` to use another tokenizer.
    """
    return _WORDS.findall(text)


def entity_spans(text: str, tokens: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """BIO tags -> entity spans with character offsets into ``text`` (tokens are found left to right)."""
    offsets, cursor = [], 0
    for tok in tokens:
        start = text.find(tok, cursor)
        start = cursor if start < 0 else start
        offsets.append((start, start + len(tok)))
        cursor = start + len(tok)
    spans: list[dict[str, Any]] = []
    for i, tag in enumerate(tags):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        continues = tag.startswith("I-") and spans and spans[-1]["label"] == kind and spans[-1]["_end"] == i
        if kind is None:
            continue
        if continues:
            spans[-1]["end"] = offsets[i][1]
            spans[-1]["_end"] = i + 1
        else:
            spans.append({"label": kind, "start": offsets[i][0], "end": offsets[i][1], "_end": i + 1})
    for span in spans:
        span.pop("_end")
        span["text"] = text[span["start"]:span["end"]]
    return spans
