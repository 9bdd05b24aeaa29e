"""Prediction heads on pooled features, kept apart from the encoders.

Tasks:

- ``binary``: two logits, softmax; P(positive) = softmax[:, 1] where the positive class is
  ``label_names[1]``. Two logits (not one) so every strategy, fine-tuning or domain adaptation,
  trains it with the same cross-entropy as ``multiclass``;
- ``multiclass``: ``num_classes`` logits, softmax, cross-entropy;
- ``regression``: one output in the target's own units (e.g. age in years). The layer learns the
  target standardised by the training split's ``target_mean`` / ``target_std`` (stored in the head's
  config, so a checkpoint predicts in original units): the output is ``fc(x) * std + mean`` and the loss
  is the mean squared error of standardised values. A fresh head thus starts at the training mean
  instead of at 0 years, and the loss scale does not depend on the unit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medtl.errors import MedtlError

TASKS = ("binary", "multiclass", "regression")


def task_for(label_names, regression: bool = False) -> str:
    """The head's task for a label set: ``regression``, ``binary`` (two classes) or ``multiclass``."""
    if regression:
        return "regression"
    return "binary" if len(label_names) == 2 else "multiclass"


class Head(nn.Module):
    """Dropout + linear layer on ``(B, in_features)`` features."""

    def __init__(self, in_features: int, task: str = "binary", num_classes: int = 2, dropout: float = 0.0,
                 target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        if task not in TASKS:
            raise MedtlError(f"unknown task {task!r}; known: {', '.join(TASKS)}", "head.task")
        if task == "binary" and num_classes != 2:
            raise MedtlError(f"a binary head has 2 classes, got num_classes={num_classes}", "head.num_classes")
        if task == "multiclass" and num_classes < 2:
            raise MedtlError(f"a multiclass head needs num_classes >= 2, got {num_classes}", "head.num_classes")
        if task != "regression" and (target_mean, target_std) != (0.0, 1.0):
            raise MedtlError("target_mean/target_std apply to regression heads only", "head.task")
        if not (math.isfinite(target_mean) and math.isfinite(target_std) and target_std > 0):
            raise MedtlError(f"target_std must be a positive finite number and target_mean finite, got "
                             f"{target_mean!r} / {target_std!r}", "head.target_std")
        self.task = task
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.num_classes = 1 if task == "regression" else int(num_classes)
        self.out_features = self.num_classes
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, self.out_features)
        self.config: dict[str, Any] = {
            "kind": "classifier",
            "in_features": int(in_features),
            "task": task,
            "num_classes": self.num_classes,
            "dropout": float(dropout),
        }
        if task == "regression":
            self.config.update(target_mean=self.target_mean, target_std=self.target_std)

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        """The head's output from its layer's raw output: original units for regression."""
        return raw * self.target_std + self.target_mean if self.task == "regression" else raw

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(self.fc(self.drop(features)))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":  # in standardised units (see the module docstring)
            return task_loss((logits.float() - self.target_mean) / self.target_std,
                             (target.float() - self.target_mean) / self.target_std, self.task)
        return task_loss(logits, target, self.task)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return predict_from_logits(logits, self.task)


def infer_task(logits: torch.Tensor, target: torch.Tensor | None = None) -> str:
    """Task of a head that does not say (e.g. a plain ``nn.Linear``): from its output width and labels."""
    if logits.shape[1] == 1 or (target is not None and target.dtype.is_floating_point):
        return "regression"
    return "binary" if logits.shape[1] == 2 else "multiclass"


def task_loss(logits: torch.Tensor, target: torch.Tensor, task: str | None = None) -> torch.Tensor:
    """The task's loss, computed in float32 (safe under autocast)."""
    task = task or infer_task(logits, target)
    logits = logits.float()
    if task == "regression":
        return F.mse_loss(logits.reshape(-1), target.float().reshape(-1))
    if target.dtype.is_floating_point:
        raise MedtlError(f"{task} labels must be integer class indices, got {target.dtype}", "label")
    return F.cross_entropy(logits, target.long())


def predict_from_logits(logits: torch.Tensor, task: str | None = None) -> torch.Tensor:
    """Probabilities ``(B, K)`` for classification, values ``(B,)`` for regression."""
    task = task or infer_task(logits)
    if task == "regression":
        return logits.float().reshape(-1)
    return logits.float().softmax(1)


def head_task(head: nn.Module) -> str | None:
    return getattr(head, "task", None)


def build_head(in_features: int | dict[str, Any], task: str = "binary", num_classes: int = 2, dropout: float = 0.0, **kw):
    """A head by task, or rebuilt from its ``config`` dict (``kind`` classifier or vae)."""
    if isinstance(in_features, dict):
        config = dict(in_features)
        kind = config.pop("kind", "classifier")
        if kind == "vae":
            from medtl.models.autoencoder import VAEHead

            return VAEHead(**config)
        if kind == "projection":  # self-supervised pretraining's projector (medtl.models.projection)
            from medtl.models.projection import ProjectionHead

            return ProjectionHead(**config)
        if kind != "classifier":
            raise MedtlError(f"unknown head kind {kind!r}", "head.kind")
        return Head(**config)
    return Head(in_features, task, num_classes, dropout, **kw)
