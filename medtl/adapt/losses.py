"""Domain adaptation losses as plain ``nn.Module``s, independent of any strategy or trainer.

All take features ``(B, F)`` (or, for the adversarial losses, whatever the discriminator accepts,
e.g. ``(B, C, *spatial)`` maps) and return a scalar. Statistics are computed in float32 or wider,
so the losses are safe under mixed precision.

References: Ganin et al. 2016 (DANN), Long et al. 2018 (CDAN, CDAN+E), Long et al. 2015 (DAN,
multi-kernel MMD), Gretton et al. 2012 (MMD estimators), Sun and Saenko 2016 (Deep CORAL),
Jin et al. 2020 (MCC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medtl.adapt.grl import GradientReversalLayer
from medtl.errors import MedtlError


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str, min_rows: int = 1) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise MedtlError(f"{what} needs (N, F) features, got {tuple(a.shape)} and {tuple(b.shape)}", what)
    if a.shape[1] != b.shape[1]:
        raise MedtlError(f"{what} needs features of one width, got {a.shape[1]} and {b.shape[1]}", what)
    if a.shape[0] < min_rows or b.shape[0] < min_rows:
        raise MedtlError(
            f"{what} needs at least {min_rows} row(s) per domain, got {a.shape[0]} and {b.shape[0]}", what
        )


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16 inputs (mixed precision), else unchanged (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of probability vectors along ``dim``."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim)


def entropy_weights(probs: torch.Tensor) -> torch.Tensor:
    """CDAN+E / MCC certainty weights ``1 + exp(-H(p))``, rescaled to sum to the batch size."""
    w = 1.0 + torch.exp(-entropy(probs))
    return w * (w.numel() / w.sum())


# ---------------------------------------------------------------- adversarial (DANN, CDAN)


class DomainAdversarialLoss(nn.Module):
    """DANN loss: binary cross-entropy of a discriminator behind a gradient reversal layer.

    Source is domain 1, target domain 0. Optional per-sample weights (CDAN+E) broadcast over any
    per-location outputs. After each call ``domain_accuracy`` holds the discriminator's accuracy.
    """

    def __init__(self, discriminator: nn.Module, grl: GradientReversalLayer | None = None):
        super().__init__()
        self.discriminator = discriminator
        self.grl = grl if grl is not None else GradientReversalLayer()
        self.domain_accuracy = float("nan")

    def _bce(self, logits: torch.Tensor, label: float, weight: torch.Tensor | None) -> torch.Tensor:
        logits = _wide(logits)
        per = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label), reduction="none")
        per = per.reshape(per.shape[0], -1).mean(1)
        return per.mean() if weight is None else (per * weight.to(per)).mean()

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        w_s: torch.Tensor | None = None,
        w_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if f_s.shape[0] == 0 or f_t.shape[0] == 0:
            raise MedtlError("domain adversarial loss needs a non-empty source and target batch", "adapt")
        d = self.discriminator(self.grl(torch.cat([f_s, f_t], 0)))
        d_s, d_t = d[: f_s.shape[0]], d[f_s.shape[0] :]
        with torch.no_grad():
            correct = (d_s > 0).float().mean() * f_s.shape[0] + (d_t <= 0).float().mean() * f_t.shape[0]
            self.domain_accuracy = float(correct) / (f_s.shape[0] + f_t.shape[0])
        return 0.5 * (self._bce(d_s, 1.0, w_s) + self._bce(d_t, 0.0, w_t))


class MultiLinearMap(nn.Module):
    """Outer product of features and class probabilities, flattened: ``(B, F) x (B, K) -> (B, F*K)``."""

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


class RandomizedMultiLinearMap(nn.Module):
    """Randomized multilinear map ``(f R_f) * (g R_g) / sqrt(d)`` (CDAN, for large ``F*K``).

    ``R_f``, ``R_g`` are fixed Gaussian matrices kept as buffers, so they move with the module and
    are saved in checkpoints (resuming gives the same map).
    """

    def __init__(self, features_dim: int, num_classes: int, output_dim: int = 1024):
        super().__init__()
        self.register_buffer("r_f", torch.randn(features_dim, output_dim))
        self.register_buffer("r_g", torch.randn(num_classes, output_dim))
        self.output_dim = output_dim

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (f @ self.r_f.to(f)) * (g @ self.r_g.to(g)) / math.sqrt(self.output_dim)


def conditioning_map(features_dim: int, num_classes: int, max_dim: int = 4096, randomized_dim: int = 1024):
    """The exact multilinear map when ``F*K <= max_dim``, else the randomized one. Returns (map, out_dim)."""
    if features_dim * num_classes <= max_dim:
        return MultiLinearMap(), features_dim * num_classes
    return RandomizedMultiLinearMap(features_dim, num_classes, randomized_dim), randomized_dim


class ConditionalDomainAdversarialLoss(nn.Module):
    """CDAN loss: the discriminator sees ``T(f, softmax(logits))``; with ``entropy_conditioning`` (CDAN+E)
    each sample is weighted by ``1 + exp(-H)`` of its prediction, normalised per domain.

    The predictions enter detached, as in Long et al.'s implementation, and so do CDAN+E's entropy weights (as
    in TLlib; the original code reverses a gradient through them): the classifier is trained by the
    classification loss, the conditioning only shapes what the discriminator compares.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        multilinear: nn.Module,
        grl: GradientReversalLayer | None = None,
        entropy_conditioning: bool = False,
    ):
        super().__init__()
        self.multilinear = multilinear
        self.adversarial = DomainAdversarialLoss(discriminator, grl)
        self.entropy_conditioning = entropy_conditioning

    @property
    def grl(self) -> GradientReversalLayer:
        return self.adversarial.grl

    @property
    def domain_accuracy(self) -> float:
        return self.adversarial.domain_accuracy

    def forward(self, logits_s, f_s, logits_t, f_t) -> torch.Tensor:
        _check_pair(f_s, f_t, "CDAN")
        if logits_s.shape[1] != logits_t.shape[1]:
            raise MedtlError("CDAN needs one label set: source and target predictions differ in width", "CDAN")
        g_s = F.softmax(_wide(logits_s), 1).detach()
        g_t = F.softmax(_wide(logits_t), 1).detach()
        h_s = self.multilinear(_wide(f_s), g_s.to(_wide(f_s).dtype))
        h_t = self.multilinear(_wide(f_t), g_t.to(_wide(f_t).dtype))
        w_s = w_t = None
        if self.entropy_conditioning:
            w_s, w_t = entropy_weights(g_s), entropy_weights(g_t)
        return self.adversarial(h_s, h_t, w_s, w_t)


# ---------------------------------------------------------------- statistic matching (DAN, CORAL)


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(N, M)``, clamped at 0."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T).clamp_min(0.0)


def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    base_bandwidth: float | None = None,
    unbiased: bool = False,
) -> torch.Tensor:
    """Squared MMD with the average of Gaussian kernels ``exp(-||a-b||^2 / (m * s))``, m in ``multipliers``.

    ``s`` is ``base_bandwidth`` or, when None, the mean squared distance between distinct points of
    the pooled sample (detached; DAN's heuristic). ``unbiased=False`` is the V-statistic (always
    >= 0, the usual training loss); ``unbiased=True`` the U-statistic of Gretton et al. (2012), which
    drops the within-sample diagonals and can be slightly negative.
    """
    _check_pair(x, y, "MMD", min_rows=2 if unbiased else 1)
    x, y = _wide(x), _wide(y)
    y = y.to(x.dtype)
    z = torch.cat([x, y], 0)
    d = pairwise_sq_dists(z, z)
    n, m = x.shape[0], y.shape[0]
    if base_bandwidth is None:
        total = n + m
        s = d.detach().sum() / max(total * (total - 1), 1)
        s = s.clamp_min(1e-12)
    else:
        if base_bandwidth <= 0:
            raise MedtlError(f"MMD bandwidth must be positive, got {base_bandwidth}", "MMD")
        s = torch.as_tensor(float(base_bandwidth), dtype=d.dtype, device=d.device)
    k = sum(torch.exp(-d / (float(mult) * s)) for mult in multipliers) / len(multipliers)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        exx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        eyy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        exx, eyy = kxx.mean(), kyy.mean()
    return exx + eyy - 2.0 * kxy.mean()


class MultipleKernelMMDLoss(nn.Module):
    """DAN's multi-kernel MMD between source and target features (see :func:`mmd2`)."""

    def __init__(
        self,
        multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        base_bandwidth: float | None = None,
        unbiased: bool = False,
    ):
        super().__init__()
        self.multipliers = tuple(float(m) for m in multipliers)
        self.base_bandwidth = base_bandwidth
        self.unbiased = unbiased

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return mmd2(f_s, f_t, self.multipliers, self.base_bandwidth, self.unbiased)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased feature covariance ``(F, F)`` of ``(N, F)`` rows (N >= 2)."""
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / (x.shape[0] - 1)


class CORALLoss(nn.Module):
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)`` between the feature covariances."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        _check_pair(f_s, f_t, "CORAL", min_rows=2)
        d = f_s.shape[1]
        diff = covariance(_wide(f_s)) - covariance(_wide(f_t)).to(_wide(f_s).dtype)
        return diff.pow(2).sum() / (4.0 * d * d)


# ---------------------------------------------------------------- target-only (MCC)


class MinimumClassConfusionLoss(nn.Module):
    """MCC (Jin et al. 2020) on unlabelled target logits ``(B, K)``.

    Temperature-scaled probabilities, certainty weights ``1 + exp(-H)`` (normalised to sum to B),
    class confusion ``C = P^T W P`` with rows normalised, loss = off-diagonal mass / K.
    """

    def __init__(self, temperature: float = 2.5):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, logits_t: torch.Tensor) -> torch.Tensor:
        if logits_t.dim() != 2 or logits_t.shape[0] == 0:
            raise MedtlError(f"MCC needs non-empty (B, K) logits, got {tuple(logits_t.shape)}", "MCC")
        k = logits_t.shape[1]
        p = F.softmax(_wide(logits_t) / self.temperature, 1)
        w = entropy_weights(p.detach()).unsqueeze(1)
        conf = p.T @ (w * p)
        conf = conf / conf.sum(1, keepdim=True).clamp_min(1e-12)
        return (conf.sum() - conf.trace()) / k
