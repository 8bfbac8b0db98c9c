"""Classification heads on top of encoder hidden states, and the encoder classifier that joins them."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from summon.models.backbone import Backbone

Pooling = Literal["mean", "cls", "pooler"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str, pooler: nn.Module | None = None) -> torch.Tensor:
    """Pool [B, L, H] hidden states to [B, H]: masked ``mean``, the first (``cls``) token, or the model's ``pooler``.

    ``pooler`` is the encoder's own pooler module (``tanh(W h_cls)`` for BERT), as the Right Tool code
    applies it to every exit.
    """
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if how == "cls":
        return hidden[:, 0]
    if how == "pooler":
        if pooler is None:
            raise ValueError("pooling='pooler' needs an encoder with a pooler (BERT has one); use 'mean' or 'cls'")
        return pooler(hidden)
    raise ValueError(f"unknown pooling '{how}'; use mean, cls or pooler")


def last_hidden(backbone: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's last hidden states [B, L, H] and the attention mask [B, L] (all ones when absent)."""
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(batch["input_ids"])
    (hidden,) = backbone(batch["input_ids"], mask, batch.get("token_type_ids"), layers=[backbone.num_layers])
    return hidden, mask


class SequenceHead(nn.Module):
    """Pool, dropout, linear: [B, L, H] -> [B, C]."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), pooling, nn.Identity())  # validates the name early
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler: nn.Module | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(pool(hidden, mask, self.pooling, pooler)))


class TokenHead(nn.Module):
    """Dropout, linear per token: [B, L, H] -> [B, L, C]."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler: nn.Module | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class EncoderClassifier(nn.Module):
    """A :class:`Backbone` with one head after its last layer; ``forward(batch)`` returns logits.

    The batch is a dict from :func:`summon.data.collate` with ``input_ids`` [B, L], ``attention_mask`` and
    optionally ``token_type_ids``. Logits are [B, C] (sequence task) or [B, L, C] (token task).
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        if getattr(head, "pooling", None) != "pooler" and self.pooler is not None:
            # Unused by this head: frozen so it gets no optimizer state and DDP sees no grad-less parameters.
            self.pooler.requires_grad_(False)

    @property
    def pooler(self) -> nn.Module | None:
        return getattr(self.backbone.model, "pooler", None)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, mask = last_hidden(self.backbone, batch)
        return self.head(hidden, mask, self.pooler)
