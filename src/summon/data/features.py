"""Turn canonical examples into model inputs, and batches of them into padded tensors.

Two featurizers share one collator: a Hugging Face tokenizer (sub-words, with word-to-sub-token
alignment for tagging) and a hashed bag of word n-grams for fastText-like students. Padding is
dynamic: each batch is padded to its own longest row.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

# Characters kept per sub-token of max_length before tokenising: WordPiece turns any word longer than 100
# characters into one [UNK], so no sub-token of the encoders summon runs spans more.
CHARS_PER_TOKEN = 100
_WARNED_LONG = False  # the cut is reported once per process: long documents are ordinary, not an error

IGNORE_INDEX = -100
# Float vectors of one fixed width per row that collate stacks as they are: a boosting round's log weights
# over classes and the previous ensemble member's last hidden layer (summon.methods.progressive).
ROW_VECTORS = ("log_w_plus", "log_w_minus", "previous_hidden")
# A CRF teacher's cached outputs over each row's chain (structured KD): [T_i, L] floats padded with 0, the k best
# paths as [T_i, k] tag ids padded with -1 (a rank with no path is -1 throughout), one [L, L] transition matrix.
TEACHER_CHAIN = ("teacher_emissions", "teacher_unary")
Feature = dict[str, Any]


class Featurizer(Protocol):
    """Encodes canonical examples to features; ``collate`` pads a list of features to a batch."""

    kind: str
    pad_id: int

    def encode(self, examples: Sequence[dict[str, Any]], task: str) -> list[Feature]: ...

    def to_config(self) -> dict[str, Any]: ...

    def save(self, directory: Path) -> None: ...


class TokenizerFeaturizer:
    """Sub-word features from a Hugging Face fast tokenizer.

    For tagging, the first sub-token of each word carries the word's tag; the other sub-tokens carry
    ``IGNORE_INDEX`` (``subtoken_label='first'``) or, with ``subtoken_label='x'``, the id of an extra
    ``X`` label as in the sub-structured KD paper's code. ``word_starts`` records each word's first
    sub-token so word-level predictions can be read back.
    """

    kind = "tokenizer"

    def __init__(self, tokenizer: Any, max_length: int = 128, subtoken_label: str = "first", x_label_id: int = -1):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(tokenizer).__name__} is a slow tokenizer; summon needs a fast one (word alignment). "
                "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        if subtoken_label not in ("first", "x"):
            raise ValueError(f"subtoken_label must be 'first' or 'x', got {subtoken_label!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.subtoken_label = subtoken_label
        self.x_label_id = x_label_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, examples: Sequence[dict[str, Any]], task: str) -> list[Feature]:
        if not examples:  # a fast tokenizer given no texts raises IndexError; no examples have no features
            return []
        if task == "token_classification":
            return self._encode_words(examples)
        texts = [self._bounded(ex["text"]) for ex in examples]
        pairs = [self._bounded(ex["text_pair"]) for ex in examples] if task == "pair_classification" else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        feats = []
        for i, ex in enumerate(examples):
            feat = {key: enc[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
            if "label" in ex:
                feat["label"] = ex["label"]
            feats.append(feat)
        return feats

    def _encode_words(self, examples: Sequence[dict[str, Any]]) -> list[Feature]:
        words = [[self._bounded(w) for w in ex["tokens"][: self.max_length]] for ex in examples]
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
        feats, dropped = [], 0
        for i, ex in enumerate(examples):
            word_ids = enc.word_ids(i)
            starts = [pos for pos, w in enumerate(word_ids) if w is not None and (pos == 0 or word_ids[pos - 1] != w)]
            dropped += len(ex["tokens"]) - len(starts)
            feat: Feature = {key: enc[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
            feat["word_starts"] = starts
            feat["num_words"] = len(ex["tokens"])
            if self.subtoken_label == "x":  # a CRF over sub-tokens chains the ones inside words
                feat["in_word"] = [w is not None for w in word_ids]
            if "tags" in ex:
                feat["labels"] = self._subtoken_labels(word_ids, starts, ex["tags"])
                feat["word_tags"] = list(ex["tags"][: len(starts)])
            feats.append(feat)
        if dropped:
            logger.warning("truncation at %d sub-tokens dropped %d words; they are predicted as the first label",
                           self.max_length, dropped)
        return feats

    def _bounded(self, text: str) -> str:
        """``text`` cut to :data:`CHARS_PER_TOKEN` characters per sub-token kept, before tokenisation, so a 50 MB
        input no longer costs gigabytes to tokenise only to be truncated. With WordPiece no sub-token spans more
        characters, so truncation keeps the same sub-tokens, unless long runs of whitespace or characters the
        tokenizer drops fill the kept part. Warned once per process."""
        bound = CHARS_PER_TOKEN * self.max_length
        if len(text) <= bound:
            return text
        global _WARNED_LONG
        if not _WARNED_LONG:
            logger.warning("an input of %d characters was cut to %d before tokenisation (max_length %d sub-tokens "
                           "keeps no more); later cuts are not reported", len(text), bound, self.max_length)
            _WARNED_LONG = True
        return text[:bound]

    def _subtoken_labels(self, word_ids: list[int | None], starts: list[int], tags: list[int]) -> list[int]:
        other = self.x_label_id if self.subtoken_label == "x" else IGNORE_INDEX
        labels = [IGNORE_INDEX if w is None else other for w in word_ids]
        for pos in starts:
            labels[pos] = tags[word_ids[pos]]
        return labels

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_length": self.max_length, "subtoken_label": self.subtoken_label,
                "x_label_id": self.x_label_id}

    def save(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))


_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class NgramFeaturizer:
    """Hashed word n-grams (fastText style): ids in ``1..num_buckets``, 0 is padding.

    The hash is CRC-32 of the UTF-8 n-gram, so ids are stable across processes and Python versions
    (Python's own ``hash`` is salted per process). The second text of a pair is marked so its n-grams
    hash apart from the first text's.
    """

    kind = "ngram"
    pad_id = 0

    def __init__(self, num_buckets: int = 1 << 20, ngram_max: int = 2, lowercase: bool = True, max_ngrams: int = 2048):
        if num_buckets < 1 or ngram_max < 1 or max_ngrams < 1:
            raise ValueError("num_buckets, ngram_max and max_ngrams must be positive")
        self.num_buckets = num_buckets
        self.ngram_max = ngram_max
        self.lowercase = lowercase
        self.max_ngrams = max_ngrams

    def ngrams(self, text: str, prefix: str = "") -> list[str]:
        words = _WORD_RE.findall(text.lower() if self.lowercase else text)
        grams = []
        for n in range(1, self.ngram_max + 1):
            grams.extend(prefix + " ".join(words[i:i + n]) for i in range(len(words) - n + 1))
        return grams

    def ids(self, text: str, text_pair: str | None = None) -> list[int]:
        grams = self.ngrams(text) + (self.ngrams(text_pair, prefix="\x01") if text_pair else [])
        ids = [1 + zlib.crc32(g.encode("utf-8")) % self.num_buckets for g in grams[: self.max_ngrams]]
        return ids or [self.pad_id]

    def encode(self, examples: Sequence[dict[str, Any]], task: str) -> list[Feature]:
        if task == "token_classification":
            raise ValueError("the bag-of-n-grams student classifies whole texts; use a transformer for tagging")
        feats = []
        for ex in examples:
            feat: Feature = {"input_ids": self.ids(ex["text"], ex.get("text_pair"))}
            if "label" in ex:
                feat["label"] = ex["label"]
            feats.append(feat)
        return feats

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_buckets": self.num_buckets, "ngram_max": self.ngram_max,
                "lowercase": self.lowercase, "max_ngrams": self.max_ngrams}

    def save(self, directory: Path) -> None:  # everything is in to_config()
        return None


# --- collation ------------------------------------------------------------------------------------


def _pad(rows: list[list[Any]], value: Any, dtype: torch.dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=dtype)


def collate(features: list[Feature], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of features into a batch (dynamic padding to the longest row).

    Returns tensors: ``input_ids`` [B, L] (and ``attention_mask``, ``token_type_ids`` when present),
    ``label`` [B] or ``labels`` [B, L] (padding ``IGNORE_INDEX``), ``word_starts``/``word_mask``/
    ``word_tags`` [B, W] for tagging (and ``in_word`` [B, L] with ``subtoken_label='x'``),
    ``example_index`` [B], ``teacher_logits`` [B, C] or [B, W, C], and the per-row float vectors of
    :data:`ROW_VECTORS` (a progressive-ensemble round's weights and the previous member's hidden layer).
    """
    first = features[0]
    batch = {"input_ids": _pad([f["input_ids"] for f in features], pad_id, torch.long)}
    for key in ("attention_mask", "token_type_ids"):
        if key in first:
            batch[key] = _pad([f[key] for f in features], 0, torch.long)
    if "label" in first:
        batch["label"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    if "labels" in first:
        batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX, torch.long)
    if "word_starts" in first:
        starts = [f["word_starts"] for f in features]
        batch["word_starts"] = _pad(starts, 0, torch.long)
        batch["word_mask"] = _pad([[True] * len(s) for s in starts], False, torch.bool)
        batch["num_words"] = torch.tensor([f["num_words"] for f in features], dtype=torch.long)
    if "in_word" in first:
        batch["in_word"] = _pad([f["in_word"] for f in features], False, torch.bool)
    if "word_tags" in first:
        batch["word_tags"] = _pad([f["word_tags"] for f in features], IGNORE_INDEX, torch.long)
    if "example_index" in first:
        batch["example_index"] = torch.tensor([f["example_index"] for f in features], dtype=torch.long)
    if "easy" in first:
        batch["easy"] = torch.tensor([f["easy"] for f in features], dtype=torch.float32)
    if "teacher_logits" in first:
        batch["teacher_logits"] = _pad_logits([f["teacher_logits"] for f in features])
    for key in ROW_VECTORS:
        if key in first:
            batch[key] = torch.stack([torch.as_tensor(f[key], dtype=torch.float32) for f in features])
    _collate_teacher_chain(batch, features)
    return batch


def _collate_teacher_chain(batch: dict[str, torch.Tensor], features: list[Feature]) -> None:
    """A CRF teacher's cached chain outputs: ``teacher_emissions`` / ``teacher_unary`` [B, T, L],
    ``teacher_paths`` [B, T, k] (-1 at padding), ``teacher_transitions`` [B, L, L], ``teacher_chain_length`` [B]."""
    first = features[0]
    for key in TEACHER_CHAIN:
        if key in first:
            batch[key] = _pad_logits([f[key] for f in features])
    if "teacher_paths" in first:
        paths = [torch.as_tensor(f["teacher_paths"], dtype=torch.long) for f in features]
        batch["teacher_paths"] = torch.nn.utils.rnn.pad_sequence(paths, batch_first=True, padding_value=-1)
    if "teacher_transitions" in first:
        batch["teacher_transitions"] = torch.stack([torch.as_tensor(f["teacher_transitions"], dtype=torch.float32)
                                                    for f in features])
    if "teacher_emissions" in first:
        batch["teacher_chain_length"] = torch.tensor([len(f["teacher_emissions"]) for f in features],
                                                     dtype=torch.long)


def _pad_logits(rows: list[Any]) -> torch.Tensor:
    tensors = [torch.as_tensor(r, dtype=torch.float32) for r in rows]
    if tensors[0].dim() == 1:
        return torch.stack(tensors)
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)


class FeatureDataset(torch.utils.data.Dataset):
    """Features held in memory, each tagged with its ``example_index``."""

    def __init__(self, features: list[Feature]):
        self.features = [dict(f, example_index=i) for i, f in enumerate(features)]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Feature:
        return self.features[index]

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]
