"""A CRF tagger: an encoder, a per-sub-token emission layer and a linear-chain :class:`CRF` on top.

Where the CRF runs (``over``):

* ``"words"`` (the default): over the word-level sequence, i.e. the emissions at each word's first
  sub-token (``word_starts`` / ``word_mask`` from :func:`summon.data.collate`). The label set is the
  task's labels; the other sub-tokens take no part.
* ``"subtokens"``: over every sub-token that belongs to a word, with one extra ``X`` label (id
  ``num_labels``) for the non-first sub-tokens, as in the sub-structured KD paper's code (Lin et al.
  2022, ``Linwenye/Efficient-KD``). Special tokens ([CLS], [SEP]) are left out of the chain, where the
  paper's code gives them labels of their own. Needs the featurizer's ``subtoken_label='x'`` (the builder
  sets it), whose ``in_word`` batch key marks the sub-tokens inside words.

Either way, :meth:`CRFTagger.crf_inputs` gives the left-aligned sequence the CRF scores, so training
methods never see which one is in use, and :meth:`CRFTagger.decode_words` returns word-level tag ids.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from summon.data.features import IGNORE_INDEX
from summon.models.backbone import Backbone
from summon.models.crf import CRF
from summon.models.heads import TokenHead, last_hidden
from summon.models.inference import word_level

CRFOver = Literal["words", "subtokens"]


class CRFTagger(nn.Module):
    """Backbone -> emissions [B, L, C'] per sub-token; a CRF over words or sub-tokens decodes them.

    ``C' = num_labels`` over words, ``num_labels + 1`` over sub-tokens (the ``X`` label last).
    ``forward(batch)`` returns the sub-token emissions, so cost measurement and the training loop treat it
    like any other token model; the CRF parts are in :meth:`crf_inputs`, :meth:`nll` and :meth:`decode_words`.
    """

    def __init__(self, backbone: Backbone, head: TokenHead, num_labels: int, over: CRFOver = "words"):
        super().__init__()
        if over not in ("words", "subtokens"):
            raise ValueError(f"model.crf_over must be 'words' or 'subtokens', got {over!r}")
        self.backbone = backbone
        self.head = head
        self.num_labels = num_labels
        self.over = over
        self.crf = CRF(num_labels + (1 if over == "subtokens" else 0))
        if self.pooler is not None:  # unused by a token head; frozen as in EncoderClassifier
            self.pooler.requires_grad_(False)

    @property
    def pooler(self) -> nn.Module | None:
        return getattr(self.backbone.model, "pooler", None)

    @property
    def x_label_id(self) -> int | None:
        """The id of the ``X`` label for non-first sub-tokens (only when the CRF runs over sub-tokens)."""
        return self.num_labels if self.over == "subtokens" else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sub-token emissions [B, L, C'] (``batch`` as for :class:`~summon.models.heads.EncoderClassifier`)."""
        hidden, mask = last_hidden(self.backbone, batch)
        return self.head(hidden, mask)

    def crf_inputs(self, batch: dict[str, torch.Tensor], emissions: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The sequence the CRF scores: (emissions [B, T, C'], mask [B, T], gold tags [B, T] or None).

        Words: T = words kept after truncation, gold tags from ``word_tags``. Sub-tokens: T = sub-tokens
        inside words, gold tags from the sub-token ``labels`` (word tags and ``X``).
        """
        if self.over == "words":
            tags = batch.get("word_tags")
            return word_level(emissions, batch), batch["word_mask"], _masked(tags, batch["word_mask"])
        index, mask = _subtoken_positions(batch)
        seq = emissions.gather(1, index.unsqueeze(-1).expand(-1, -1, emissions.shape[-1]))
        labels = batch.get("labels")
        tags = None if labels is None else _masked(labels.gather(1, index), mask)
        return seq, mask, tags

    def nll(self, batch: dict[str, torch.Tensor], emissions: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the gold tags: [B] (the batch must hold labels)."""
        seq, mask, tags = self.crf_inputs(batch, emissions)
        if tags is None:
            raise ValueError("the CRF loss needs gold tags in the batch (word_tags / labels); this data has none")
        return self.crf.nll(seq, tags, mask)

    def decode_words(self, batch: dict[str, torch.Tensor], emissions: torch.Tensor) -> list[list[int]]:
        """Viterbi paths read back per word: one list of tag ids per row, over the words kept after truncation.

        Over sub-tokens, each word takes the tag decoded at its first sub-token; an ``X`` there (possible
        only with an odd transition matrix) becomes label 0.
        """
        seq, mask, _ = self.crf_inputs(batch, emissions)
        paths = self.crf.decode(seq, mask)
        if self.over == "words":
            return paths
        starts = _word_starts_in_chain(batch)
        kept = batch["word_mask"].sum(dim=1).tolist()
        words = []
        for path, row, k in zip(paths, starts.tolist(), kept, strict=True):
            tags = [path[p] for p in row[:k]]
            words.append([0 if t == self.num_labels else t for t in tags])
        return words

    def word_scores(self, batch: dict[str, torch.Tensor], emissions: torch.Tensor) -> torch.Tensor:
        """The decoded paths as one-hot scores per word [B, W, num_labels] (zero rows at padding).

        What :func:`summon.models.inference.predict_logits` returns for a CRF tagger, so everything that reads
        tags as the arg-max of a row (evaluation, predictors) reads the Viterbi path.
        """
        width = batch["word_mask"].shape[1]
        out = emissions.new_zeros(emissions.shape[0], width, self.num_labels)
        for b, path in enumerate(self.decode_words(batch, emissions)):
            if path:
                out[b, torch.arange(len(path)), torch.tensor(path)] = 1.0
        return out


def _masked(tags: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """Gold tags with padding (IGNORE_INDEX) replaced by 0; the CRF ignores those positions anyway."""
    if tags is None:
        return None
    return torch.where(mask & (tags != IGNORE_INDEX), tags, torch.zeros_like(tags))


def _subtoken_positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the sub-tokens inside words, left-aligned: (index [B, T], mask [B, T])."""
    in_word = batch.get("in_word")
    if in_word is None:
        raise ValueError("a CRF over sub-tokens needs the batch key 'in_word': build the featurizer with "
                         "subtoken_label='x' (model.crf_over=subtokens does this)")
    order = torch.argsort((~in_word).to(torch.int8), dim=1, stable=True)  # in-word positions first, in order
    count = in_word.sum(dim=1)
    width = max(int(count.max()), 1)
    mask = torch.arange(width, device=in_word.device).unsqueeze(0) < count.unsqueeze(1)
    return order[:, :width], mask


def _word_starts_in_chain(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each word's first sub-token as a position in the sub-token chain: [B, W]."""
    chain_pos = batch["in_word"].long().cumsum(dim=1) - 1
    return chain_pos.gather(1, batch["word_starts"])
