"""Feature arrays for the similarity measures: an encoder run over a dataset, and array files.

:func:`extract_features` is generic: any encoder ``(B, C, *spatial) -> (B, F)`` and any iterable of
MONAI-style dictionaries (a dataset of items or a loader of batches). :func:`load_array` reads the
files the CLI accepts (``.npy``, ``.npz`` with one array or a ``features`` key, ``.csv``/``.txt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.data.io import ARRAY_MEMBER
from medtl.errors import MedtlError


def extract_features(
    encoder: nn.Module,
    data: Any,
    head: nn.Module | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray | None]:
    """Run ``encoder`` (eval mode, fp32) over ``data``: a dataset or list of items (batched here) or a
    loader of batches. Returns ``features (N, F)``, ``labels (N,)`` (or
    None when items have none) and, with a classification ``head``, its softmax ``probs (N, K)``."""
    from torch.utils.data import DataLoader, Dataset

    from medtl.engine.inference import run_model
    from medtl.models.checkpoint import Model

    if not isinstance(data, DataLoader) and isinstance(data, (Dataset, list, tuple)):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)  # items -> batches
    model, outputs = (encoder, ("features",)) if head is None else (Model(encoder, head), ("features", "probs"))
    out = run_model(model, data, outputs, device=device)
    if not out.n_batches:
        raise MedtlError("empty domain: no images to extract features from", "data")
    labels = out.cat("labels")
    return {
        "features": out.cat("features").numpy(),
        "labels": labels.numpy().reshape(-1) if labels is not None else None,
        "probs": out.cat("probs").numpy() if head is not None else None,
    }


def load_array(path: str | Path, key: str = "features") -> np.ndarray:
    """An array from ``.npy``, ``.npz`` (``key`` or its only array; ``file.npz::name`` picks one, as a manifest names an array, e.g. the
    ``source`` array medtl similarity --save-features writes) or ``.csv``/``.txt`` (numbers; a single column
    of non-numbers is read as string labels)."""
    p = Path(path)
    name, sep, member = str(path).partition(ARRAY_MEMBER)
    named = bool(sep) and name.lower().endswith(".npz")
    if named:
        p, key = Path(name), member
    if not p.is_file():
        raise MedtlError("file not found", p)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if key in z.files:
                    return z[key]
                if named:  # asked for by name: another array is not it
                    raise MedtlError(f"npz holds {z.files}, no {key!r}", p)
                if len(z.files) == 1:
                    return z[z.files[0]]
                raise MedtlError(f"npz holds {z.files}; expected a {key!r} array or a single array (name one: "
                                 f"{p}{ARRAY_MEMBER}{z.files[0]})", p)
        if suffix in (".csv", ".txt", ".tsv"):
            delim = "\t" if suffix == ".tsv" else ("," if suffix == ".csv" else None)
            try:
                return np.loadtxt(p, delimiter=delim, ndmin=1)
            except ValueError:
                values = [line.strip() for line in p.read_text().splitlines() if line.strip()]
                if any(delim and delim in v for v in values):
                    raise MedtlError("non-numeric values in a multi-column file", p) from None
                return np.asarray(values)
    except (OSError, ValueError) as err:
        raise MedtlError(f"cannot read array: {err}", p) from None
    raise MedtlError(f"unsupported array file type {suffix!r} (use .npy, .npz, .csv or .txt)", p)
