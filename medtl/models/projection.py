"""Projection head for self-supervised pretraining: pooled features -> a small embedding.

Contrastive losses are computed on ``g(f(x))``, not on the encoder's features ``f(x)``: the head absorbs
the invariances the loss forces (to crops, intensity changes), so ``f`` keeps more of what a later
task needs (SimCLR, Chen et al. 2020; MoCo v2, Chen et al. 2020). The head is dropped on transfer:
``load_weights(encoder, "model.pt")`` takes the ``encoder.*`` weights and lists the ``head.*`` ones as
ignored. It acts on pooled ``(B, F)`` features, so it serves 2D and 3D encoders alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """``Linear(F, hidden) -> ReLU -> Linear(hidden, out_dim)``, the MoCo v2 / SimCLR projector."""

    def __init__(self, in_features: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__()
        self.task = "embedding"  # not a classifier: similarity and predict treat it as no head
        self.out_features = int(out_dim)
        self.net = nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))
        self.config: dict[str, Any] = {"kind": "projection", "in_features": int(in_features),
                                       "hidden_dim": int(hidden_dim), "out_dim": int(out_dim)}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
