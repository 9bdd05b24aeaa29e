"""Validation during training and plain predictions: one pass over a loader, no gradients.

These are the trainer's own quick numbers (loss, accuracy, AUROC, MAE) for early stopping and the
log; the diagnostic report with confidence intervals lives in medtl.evaluation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.models.heads import head_task, infer_task, predict_from_logits, task_loss


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device`` (MONAI MetaTensors as plain tensors: the model needs no metadata)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.as_tensor() if hasattr(v, "as_tensor") else v
            v = v.to(device, non_blocking=True)
        out[k] = v
    return out


PRECISIONS = ("auto", "off", "bf16", "fp16")


def precision_dtype(policy: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a precision policy on ``device`` (None: plain fp32).

    The one policy: a checkpoint records it (meta ``precision``) and training, evaluation and
    ``medtl predict`` all resolve it here, so the deployed model computes as the evaluated one did.
    "auto" is bf16 on CUDA (fp16 where bf16 is missing) and fp32 on CPU, where bf16 autocast was
    measured slower and less exact on the development CPUs.
    """
    from medtl.errors import MedtlError

    if policy not in PRECISIONS:
        raise MedtlError(f"unknown precision {policy!r}; use one of {', '.join(PRECISIONS)}", "precision")
    device = torch.device(device)
    if policy == "off" or (policy == "auto" and device.type != "cuda"):
        return None
    if policy == "fp16" or (policy == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if hasattr(model, "validation_step"):
        return model.validation_step(batch)
    logits = model(batch["image"])
    if "label" not in batch:
        return None, logits
    head = getattr(model, "head", None)
    loss = head.loss(logits, batch["label"]) if hasattr(head, "loss") else task_loss(logits, batch["label"])
    return loss, logits


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


@torch.no_grad()
def collect(model: nn.Module, loader, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
            progress: bool = False) -> dict[str, Any]:
    """The raw per-batch pieces of :func:`predict` (CPU logits and labels, string fields, loss terms).

    Pieces from consecutive parts of one loader concatenate (``merge_collected``) into exactly the
    pieces of the whole: that is how sharded inference (medtl.engine.distributed) merges its ranks.
    """
    from medtl.progress import bar

    device = torch.device(device)
    was_training = model.training
    model.eval()
    raw: dict[str, Any] = {"logits": [], "labels": [], "strings": {}, "loss_terms": [], "n_loss": 0}
    try:
        for batch in bar(loader, desc="eval", leave=False, enabled=progress):
            batch = to_device(batch, device)
            with autocast(device, amp_dtype):
                loss, logits = _step(model, batch)
            n = int(batch["image"].shape[0])
            if loss is not None:
                raw["loss_terms"].append(float(loss) * n)
                raw["n_loss"] += n
            if logits is not None:
                raw["logits"].append(logits.float().cpu())
            if "label" in batch:
                raw["labels"].append(batch["label"].cpu())
            for k, v in batch.items():
                if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
                    raw["strings"].setdefault(k, []).extend(v)
    finally:
        model.train(was_training)
    return raw


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
