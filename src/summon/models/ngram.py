"""A fastText-like bag-of-n-grams classifier: a CPU-cheap first stage for cascades.

Joulin et al. 2017 (*Bag of Tricks for Efficient Text Classification*): average the embeddings of the
hashed word n-grams, then a linear classifier. An optional hidden layer is our addition.
"""

from __future__ import annotations

import torch
from torch import nn


class NgramClassifier(nn.Module):
    """Mean of hashed n-gram embeddings -> (optional ReLU layer) -> linear.

    ``forward(batch)`` reads ``input_ids`` [B, N] (n-gram ids, 0 = padding) and returns logits [B, C].
    """

    def __init__(self, num_buckets: int, num_labels: int, embed_dim: int = 64, hidden_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.EmbeddingBag(num_buckets + 1, embed_dim, mode="mean", padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -1.0 / embed_dim, 1.0 / embed_dim)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = embed_dim
        if hidden_dim:
            layers += [nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, num_labels))
        self.classifier = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.embedding(batch["input_ids"]))
