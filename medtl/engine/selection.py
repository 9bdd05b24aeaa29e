"""Label-free checkpoint selection inside training: every epoch, each selector's score, logged.

:class:`SelectorScores` is an ``epoch_metrics`` measurement for the trainer (``fit(...,
epoch_metrics=[scores])``). After each epoch it runs the model over the labelled source validation
split and the unlabelled target training split (deterministic transforms) and logs, for every
selector of :mod:`medtl.adapt.selection`, ``sel_<name>``; the trainer's ``monitor`` can then be one of
them, so the named selector chooses the saved checkpoint. Given labelled target splits it also logs
``oracle_<split>_auroc``: never used to choose, only to measure afterwards what each selector's choice
cost against choosing with target labels (its regret; see :func:`selector_regret`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.adapt import selection as S
from medtl.engine.inference import run_model
from medtl.errors import MedtlError

# selector -> (logged key, trainer mode). "source_loss" is the plain source validation loss (the default).
SELECTOR_MONITORS = {
    "source_loss": ("val_loss", "min"),
    **{name: (f"sel_{name}", "max" if higher else "min") for name, (_, _, higher, _) in S.SELECTORS.items()},
}


def features_and_probs(model: nn.Module, loader, device: torch.device, amp_dtype) -> dict[str, np.ndarray]:
    """Encoder features, head probabilities and labels (when the batches carry them) over ``loader``."""
    out = run_model(model, loader, ("features", "probs"), device=device, amp_dtype=amp_dtype)
    arrays = {"features": out.cat("features").numpy(), "probs": out.cat("probs").numpy()}
    if out.labels:
        arrays["labels"] = torch.cat(out.labels).numpy()
    return arrays


def _auroc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(np.unique(labels)) < probs.shape[1]:
        return None
    return float(roc_auc_score(labels, probs, multi_class="ovr"))


class SelectorScores:
    """Every selector's score each epoch (see the module docstring)."""

    def __init__(self, source_val, target_unlabelled, device: str | torch.device = "cpu", amp_dtype=None,
                 oracle: dict[str, Any] | None = None, seed: int = 0):
        self.source_val, self.target = source_val, target_unlabelled
        self.device, self.amp_dtype, self.seed = torch.device(device), amp_dtype, seed
        self.oracle = dict(oracle or {})  # split name -> labelled target loader, for regret only

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        src = features_and_probs(model, self.source_val, self.device, self.amp_dtype)
        tgt = features_and_probs(model, self.target, self.device, self.amp_dtype)
        record = {"source_probs": src["probs"], "source_labels": src["labels"], "source_features": src["features"],
                  "target_features": tgt["features"], "target_probs": tgt["probs"]}
        out: dict[str, Any] = {}
        dev: dict[str, float] = {}  # DEV's weights: how even they are says how far to trust its risk
        for name, (fn, keys, _, _) in S.SELECTORS.items():
            options = {"seed": self.seed, "diagnostics": dev} if name == "dev" else {}
            try:
                out[f"sel_{name}"] = float(fn(*(record[k] for k in keys), **options))
            except MedtlError:  # e.g. too few rows for one selector: the others still count
                out[f"sel_{name}"] = None
        out.update({f"dev_{k}": v for k, v in dev.items()})
        for split, loader in self.oracle.items():
            part = features_and_probs(model, loader, self.device, self.amp_dtype)
            out[f"oracle_{split}_auroc"] = _auroc(part["probs"], part["labels"])
        return out


def selector_regret(history: list[dict[str, Any]], choose_on: str = "oracle_val_auroc",
                    score_on: str = "oracle_test_auroc") -> dict[str, dict[str, Any]]:
    """Per selector, from one run's epoch records: the epoch it would choose, the target test AUROC there,
    and the regret against choosing the epoch with target labels (best ``choose_on``), in AUROC points."""
    epochs = [r for r in history if r.get(score_on) is not None and r.get(choose_on) is not None]
    if not epochs:
        return {}
    oracle = max(epochs, key=lambda r: r[choose_on])
    out = {}
    for name, (key, mode) in SELECTOR_MONITORS.items():
        scored = [r for r in epochs if r.get(key) is not None and np.isfinite(r[key])]
        if not scored:
            continue
        chosen = (min if mode == "min" else max)(scored, key=lambda r: r[key])
        out[name] = {"epoch": chosen["epoch"], "test_auroc": chosen[score_on],
                     "regret": oracle[score_on] - chosen[score_on]}
    out["target_labels"] = {"epoch": oracle["epoch"], "test_auroc": oracle[score_on], "regret": 0.0}
    return out
