"""Gradient reversal (Ganin and Lempitsky 2015; Ganin et al. 2016).

The layer is the identity going forward and multiplies the incoming gradient by ``-coeff`` going
backward, so one optimiser step trains a discriminator to tell domains apart while the encoder
below the layer learns to make them indistinguishable.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-coeff`` backward."""
    return _ReverseGrad.apply(x, float(coeff))


def warm_start_coefficient(progress: float, max_coeff: float = 1.0, gamma: float = 10.0) -> float:
    """Ganin et al. (2016) schedule: ``max_coeff * (2 / (1 + exp(-gamma * p)) - 1)``, p in [0, 1].

    Starts at 0 (the discriminator's noisy early gradients do not disturb the encoder) and rises
    smoothly to about ``max_coeff`` (0.9999 of it at p = 1 with gamma = 10).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return float(max_coeff) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


class GradientReversalLayer(nn.Module):
    """Gradient reversal with a coefficient that is either fixed or follows the warm-start schedule.

    ``schedule=True``: call :meth:`set_progress` (strategies do, once per step) and the coefficient
    becomes :func:`warm_start_coefficient` of it; ``schedule=False``: ``coeff = max_coeff`` always.
    """

    def __init__(self, max_coeff: float = 1.0, gamma: float = 10.0, schedule: bool = True):
        super().__init__()
        self.max_coeff = float(max_coeff)
        self.gamma = float(gamma)
        self.schedule = schedule
        self.coeff = warm_start_coefficient(0.0, max_coeff, gamma) if schedule else self.max_coeff

    def set_progress(self, progress: float) -> float:
        if self.schedule:
            self.coeff = warm_start_coefficient(progress, self.max_coeff, self.gamma)
        return self.coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.coeff)

    def extra_repr(self) -> str:
        return f"max_coeff={self.max_coeff}, gamma={self.gamma}, schedule={self.schedule}, coeff={self.coeff:.4g}"
