"""Validation during training and plain predictions: one pass over a loader, no gradients.

These are the trainer's own quick numbers (loss, accuracy, AUROC, MAE) for early stopping and the
log; the diagnostic report with confidence intervals lives in medtl.evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

# The precision policy and device moves belong to the inference core; imported here for existing callers.
from medtl.engine.inference import PRECISIONS, autocast, precision_dtype, run_model, to_device
from medtl.models.heads import head_task, infer_task, predict_from_logits


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Accuracy and AUROC (binary: of class 1; multiclass: macro one-vs-rest); None when undefined."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {"accuracy": float((probs.argmax(1) == labels).mean())}
    present = np.unique(labels)
    if len(present) < 2:
        out["auroc"] = None  # one class only: AUROC is undefined
    elif probs.shape[1] == 2:
        out["auroc"] = float(roc_auc_score(labels, probs[:, 1]))
    elif len(present) == probs.shape[1]:
        out["auroc"] = float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    else:
        out["auroc"] = None
    return out


def collect(model: nn.Module, loader, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
            progress: bool = False) -> dict[str, Any]:
    """The raw per-batch pieces of :func:`predict` (CPU logits and labels, string fields, loss terms).

    Pieces from consecutive parts of one loader concatenate (``merge_collected``) into exactly the
    pieces of the whole: that is how sharded inference (medtl.engine.distributed) merges its ranks.
    """
    out = run_model(model, loader, ("loss", "logits"), device=device, amp_dtype=amp_dtype, progress=progress,
                    desc="eval")
    return {"logits": out.logits, "labels": out.labels, "strings": out.fields, "loss_terms": out.loss_terms,
            "n_loss": out.n_loss}


def merge_collected(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate :func:`collect` pieces in the given order."""
    raw: dict[str, Any] = {"logits": [], "labels": [], "strings": {}, "loss_terms": [], "n_loss": 0}
    for part in parts:
        raw["logits"] += part["logits"]
        raw["labels"] += part["labels"]
        raw["loss_terms"] += part["loss_terms"]
        raw["n_loss"] += part["n_loss"]
        for k, v in part["strings"].items():
            raw["strings"].setdefault(k, []).extend(v)
    return raw


def assemble(raw: dict[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """The :func:`predict` output from :func:`collect` pieces."""
    out: dict[str, Any] = dict(raw["strings"])
    loss_sum = 0.0
    for term in raw["loss_terms"]:  # in batch order, as a single pass adds them
        loss_sum += term
    out["loss"] = loss_sum / raw["n_loss"] if raw["n_loss"] else None
    labels = raw["labels"]
    if raw["logits"]:
        logits = torch.cat(raw["logits"])
        task = head_task(getattr(model, "head", None))
        label_t = torch.cat(labels) if labels else None
        task = task if task in ("binary", "multiclass", "regression") else infer_task(logits, label_t)
        out["task"] = task
        out["logits"] = logits.numpy()
        out["prob"] = predict_from_logits(logits, task).numpy()
    if labels:
        out["label"] = torch.cat(labels).numpy()
    return out


def predict(model: nn.Module, loader, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Outputs for every item: ``logits`` (N, K), ``prob`` ((N, K) or (N,) for regression), ``label`` when
    given, and the batch's string fields (``case_id``, ``patient_id``, ``domain``) as lists; ``loss`` is
    the mean validation loss (None without labels)."""
    return assemble(collect(model, loader, device, amp_dtype, progress), model)


def metrics_from_predictions(p: dict[str, Any]) -> dict[str, float | None]:
    """``loss`` plus ``accuracy``/``auroc`` (classification) or ``mae`` (regression) of a :func:`predict` output."""
    metrics: dict[str, float | None] = {"loss": p["loss"]}
    if "prob" in p and "label" in p:
        if p["task"] == "regression":
            metrics["mae"] = float(np.abs(p["prob"] - p["label"].astype(np.float64)).mean())
        else:
            metrics.update(classification_metrics(p["prob"], p["label"].astype(np.int64)))
    return metrics


def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
             progress: bool = False) -> dict[str, float | None]:
    """``loss`` plus ``accuracy``/``auroc`` (classification) or ``mae`` (regression) over ``loader``."""
    return metrics_from_predictions(predict(model, loader, device, amp_dtype, progress))


__all__ = ["PRECISIONS", "assemble", "autocast", "classification_metrics", "collect", "evaluate", "merge_collected",
           "metrics_from_predictions", "precision_dtype", "predict", "to_device"]
