"""Synthetic predictions tables with a known truth, for demos, docs and tests.

Every patient has a true class-probability vector ``q = softmax(t)`` (``t`` normal around the log
prevalence, spread ``separation``); the label is drawn from ``q``, so ``q`` itself is perfectly
calibrated. A strategy ``(noise, scale)`` outputs ``softmax(scale * (t + image_noise + N(0, noise)))``:
more noise means weaker discrimination, ``scale > 1`` over-confidence (temperature scaling should
find T close to ``scale``). Strategies score the same cases and share ``t``, so they are correlated
as real models on one test set are. Fewer labels (``label_fraction``) add noise.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medtl.evaluation.predictions import predictions_from_arrays

DEFAULT_STRATEGIES = {"scratch": (1.6, 1.0), "finetune": (0.7, 1.5), "dann": (0.5, 1.2)}


def synthetic_predictions(
    n_patients: int = 150,
    *,
    strategies: Mapping[str, tuple[float, float]] | None = None,
    classes: Sequence[str] = ("normal", "tumor"),
    prevalence: Sequence[float] | None = None,
    separation: float = 2.0,
    seeds: Sequence[int] = (0,),
    label_fractions: Sequence[float] | None = None,
    val_fraction: float = 0.3,
    images_per_patient: int = 2,
    task: str = "tumor",
    seed: int = 0,
) -> pd.DataFrame:
    """A validated predictions table: val and test patients, one run per strategy, seed and fraction."""
    rng = np.random.default_rng(seed)
    strategies = strategies or DEFAULT_STRATEGIES
    K = len(classes)
    if prevalence is None:
        prevalence = [0.7, 0.3] if K == 2 else [1.0 / K] * K
    log_prior = np.log(np.asarray(prevalence, dtype=float) / np.sum(prevalence))
    # Patients: true logits, a label drawn from them, a split, one or more images.
    t_pat = log_prior + rng.normal(0, separation, size=(n_patients, K))
    q = np.exp(t_pat - t_pat.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    pat_class = (rng.uniform(size=(n_patients, 1)) > q.cumsum(axis=1)).sum(axis=1)
    pat_split = np.where(rng.random(n_patients) < val_fraction, "val", "test")
    n_img = rng.integers(1, images_per_patient + 1, size=n_patients)
    pat = np.repeat(np.arange(n_patients), n_img)
    t_img = t_pat[pat] + rng.normal(0, 0.3, size=(len(pat), K))  # images of one patient differ a little
    y = pat_class[pat]
    case_ids = [f"case{i:04d}" for i in range(len(pat))]
    frames = []
    for name, (noise, scale) in strategies.items():
        for frac in list(label_fractions) if label_fractions else [None]:
            for s in seeds:
                r = np.random.default_rng([seed, s, zlib.crc32(name.encode()), int(1000 * (frac or 1))])
                sd = noise * (1.0 if frac is None else 1.0 + 1.2 * (1.0 - frac**0.5)) * r.uniform(0.9, 1.1)
                z = scale * (t_img + r.normal(0, sd, size=t_img.shape))
                P = np.exp(z - z.max(axis=1, keepdims=True))
                P /= P.sum(axis=1, keepdims=True)
                extra = {} if frac is None else {"label_fraction": frac}
                run = f"{name}-s{s}" + ("" if frac is None else f"-f{frac:g}")
                frames.append(predictions_from_arrays(
                    case_ids, y, P, class_names=classes, patient_ids=[f"p{i:04d}" for i in pat],
                    domain="target", split=pat_split[pat], run_id=run, strategy=name, task=task, seed=s, **extra,
                ))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def synthetic_regression(n: int = 200, *, task: str = "age", strategy: str = "finetune", seed: int = 0) -> pd.DataFrame:
    """A regression predictions table (e.g. brain age): prediction = truth + noise, shrunk to the mean."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 85, size=n)
    pred = age + rng.normal(0, 6, size=n) + 0.1 * (50 - age)
    split = np.where(rng.random(n) < 0.3, "val", "test")
    return predictions_from_arrays([f"r{i:04d}" for i in range(n)], age, prediction=pred, split=split,
                                   run_id=f"{strategy}-age", strategy=strategy, task=task, seed=0)  # fmt: skip
