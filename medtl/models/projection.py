"""Projection head for self-supervised pretraining: pooled features -> a small embedding.

Contrastive losses are computed on ``g(f(x))``, not on the encoder's features ``f(x)``: the head absorbs
the invariances the loss forces (to crops, intensity changes), so ``f`` keeps more of what a later
task needs (SimCLR, Chen et al. 2020; MoCo v2, Chen et al. 2020). The head is dropped on transfer:
``load_weights(encoder, "model.pt")`` takes the ``encoder.*`` weights and lists the ``head.*`` ones as
ignored. It acts on pooled ``(B, F)`` features, so it serves 2D and 3D encoders alike.

Batch norm after the hidden layer (``batch_norm=True``, as SimCLR, BYOL and MoCo v3 have it; MoCo v2's
projector has none): the pooled features of an untrained ResNet are nearly collinear (cosine 0.96
between the features of different chest X-rays, measured at 64 px), and a short run without it left
the embeddings bunched together (cosine 0.84 between different images after 4 epochs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """``Linear(F, hidden) [-> BatchNorm1d] -> ReLU -> Linear(hidden, out_dim)``."""

    def __init__(self, in_features: int, hidden_dim: int = 2048, out_dim: int = 128, batch_norm: bool = True):
        super().__init__()
        self.task = "embedding"  # not a classifier: similarity and predict treat it as no head
        self.out_features = int(out_dim)
        norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        self.net = nn.Sequential(nn.Linear(in_features, hidden_dim), *norm, nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))
        self.config: dict[str, Any] = {"kind": "projection", "in_features": int(in_features),
                                       "hidden_dim": int(hidden_dim), "out_dim": int(out_dim),
                                       "batch_norm": bool(batch_norm)}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
