"""Similarity measured on images: manifests -> one encoder's features -> distances.

- :func:`load_encoder`: the encoder of a medtl checkpoint, or, without one, a documented default
  (a randomly initialised ``resnet10``, fixed seed; *untrained*, nothing is downloaded).
- :func:`dataset_features`: one data set's features (a seeded subset of a manifest, read with its
  modality's preset). 3D volumes given to a 2D encoder are read through the 2.5D lift
  (``lift(encoder, "2.5d", slice_axis=2)``: the 2D encoder on every axial slice of the RAS volume,
  features averaged over slices), so 2D images and volumes land in the same feature space.
- :func:`compare_manifests`: source vs target manifest (``medtl similarity --source --target``):
  the :func:`medtl.similarity.assess.assess` dictionary plus what was compared and how.
- :func:`similarity_matrix`: every pair of several data sets (``medtl similarity --matrix``): MMD^2
  with its permutation p-value, proxy A-distance and Frechet distance, features extracted once per
  data set; the diagonal holds a split-half reference (two random halves of one data set).
- :func:`matrix_tables`: the matrix as one table per metric (plain text or Markdown).

Preset options (image size, spacing, volume shape) come, per key, from an explicit override, else
the checkpoint's ``meta["intensity"]`` (how its encoder was trained), else :data:`SMALL_OPTIONS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medtl.data.transforms import Preset
from medtl.errors import MedtlError
from medtl.models.transfer import LIFT_OPTIONS
from medtl.progress import bar

log = logging.getLogger(__name__)

DEFAULT_ARCH = "resnet10"
DEFAULT_INIT_SEED = 0
# Small sizes for the preset chains, used unless the checkpoint's meta["intensity"] says otherwise.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "cxr": {"image_size": 64},
    "mri2d": {"image_size": 64},
    "mri3d": {"spacing": (4.0, 4.0, 4.0), "volume_shape": (40, 48, 40)},
}
SLICE_AXIS = LIFT_OPTIONS["2.5d"]["slice_axis"]  # RAS volumes from the mri3d preset: axial slices
MATRIX_METRICS: dict[str, str] = {
    "mmd2": "MMD^2 (unbiased, multi-kernel Gaussian; lower = closer)",
    "mmd_p_value": "MMD permutation-test p-value (small = the two samples differ)",
    "proxy_a_distance": "proxy A-distance 2(1-2 err) (0 = indistinguishable .. 2 = separable)",
    "frechet": "Frechet distance between fitted Gaussians (lower = closer)",
}


# --- the encoder ---------------------------------------------------------------------------------


def load_encoder(checkpoint: str | Path | None = None, *, arch: str = DEFAULT_ARCH, seed: int = DEFAULT_INIT_SEED,
                 device: str = "cpu", stem_stride: int = 2):
    """``(encoder, head, info)``. With a checkpoint: its encoder and head (head None unless a
    classifier) and ``info`` describing it, including its ``meta``. Without: a randomly initialised
    2D ``arch`` (``stem_stride``) built under ``torch`` seed ``seed`` (the global RNG is left untouched),
    head None, ``info["trained"] = False``."""
    import torch

    if checkpoint is not None:
        from medtl.models import load_checkpoint

        model, meta = load_checkpoint(checkpoint, map_location=device)
        head = model.head if getattr(model.head, "task", None) in ("binary", "multiclass") else None
        enc_cfg = dict(model.encoder.config)
        info = {
            "checkpoint": str(checkpoint),
            "trained": True,
            "arch": enc_cfg.get("arch"),
            "spatial_dims": int(getattr(model.encoder, "spatial_dims", 2)),
            "out_features": int(model.encoder.out_features),
            "lift": enc_cfg.get("lift"),
            "trained_on": meta.get("manifest") or meta.get("domains"),
            "intensity": meta.get("intensity"),
            "description": f"checkpoint {checkpoint} ({enc_cfg.get('arch')}, {meta.get('mode') or 'trained'})",
        }
        return model.encoder.eval(), head, info
    from medtl.models import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(arch, spatial_dims=2, stem_stride=stem_stride)
    info = {
        "checkpoint": None,
        "trained": False,
        "arch": arch,
        "spatial_dims": 2,
        "out_features": int(encoder.out_features),
        "lift": None,
        "init_seed": seed,
        "intensity": None,
        "description": f"UNTRAINED default encoder: randomly initialised 2D {arch} (torch seed {seed}); "
        "no checkpoint given and nothing downloaded. Its features reflect image statistics seen through "
        "random filters, not learned ones.",
    }
    return encoder.to(device).eval(), None, info


def preset_options(modality: str, intensity: Mapping[str, Any] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preset options for ``modality``: per key, ``overrides`` (non-None), else the checkpoint's
    ``intensity`` (when it has the key), else :data:`SMALL_OPTIONS`, else the preset's default."""
    from medtl.data.transforms import DEFAULTS

    if modality not in SMALL_OPTIONS:
        raise MedtlError(f"unknown modality {modality!r}; known: {sorted(SMALL_OPTIONS)}", "modality")
    # every option the chain uses, so the record says all of them (the 3D crop too, whose default changed)
    opts = {**DEFAULTS[modality], **SMALL_OPTIONS[modality]}
    for key in DEFAULTS[modality]:
        if intensity and intensity.get(key) is not None:
            opts[key] = intensity[key]
        if overrides and overrides.get(key) is not None:
            opts[key] = overrides[key]
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items()}


def encoder_for(encoder, modality: str):
    """``(encoder to use, view)``: a 2D encoder on 3D volumes becomes its 2.5D lift (slice_axis=2)."""
    dims = int(getattr(encoder, "spatial_dims", 2))
    if Preset(modality).spatial_dims == 3:
        if dims == 2:
            from medtl.models.lift import lift

            return lift(encoder, "2.5d", **LIFT_OPTIONS["2.5d"]), "2.5d"
        return encoder, "3d"
    if dims != 2:
        raise MedtlError(f"a {dims}D encoder cannot read the 2D images of a {modality} manifest; "
                         "use a 2D encoder (volumes are then read through its 2.5D lift)", "encoder")
    return encoder, "2d"


VIEW_NOTE = {
    "2d": "2D images through the 2D encoder",
    "2.5d": (f"volumes read through the 2.5D lift of the 2D encoder (slice_axis={SLICE_AXIS}: every axial "
             "slice of the RAS volume, features averaged over slices), so they share the 2D feature space"),
    "3d": "volumes through the 3D encoder",
}


# --- one data set -----------------------------------------------------------------------------------


def _load_manifest(manifest):
    from medtl.data.manifest import Manifest

    return manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)


DEFAULT_SPLIT = "train"  # a transferability score from the test labels would choose the strategy with them
EVERY_SPLIT = "all"


def select_cases(manifest, split: str = DEFAULT_SPLIT, max_cases: int | None = None, seed: int = 0):
    """The rows of ``split`` (every row when ``"all"``), then at most ``max_cases`` of them drawn at
    random.
    The draw is seeded by ``seed`` and the manifest's content, so a data set gets the same subset
    whatever it is compared with. Returns ``(manifest, n_available)``."""
    from medtl.data.manifest import Manifest

    m = _load_manifest(manifest)
    if not isinstance(split, str):
        raise MedtlError(f"must be a split name, or '{EVERY_SPLIT}' for every row; got {split!r}", "split")
    if split != EVERY_SPLIT:
        present = sorted({r.split for r in m})
        m = m.select(split=split)
        if not len(m) and present:
            raise MedtlError(f"no rows in split {split!r} (splits present: {', '.join(present)}); choose one of "
                             f"them, or split='{EVERY_SPLIT}' (--split {EVERY_SPLIT}) for every row", m.source)
    n = len(m)
    if n == 0:
        raise MedtlError("empty domain: no rows", m.source)
    if max_cases is not None:
        if max_cases < 2:
            raise MedtlError(f"max_cases must be at least 2, got {max_cases}", "max_cases")
        if n > max_cases:
            rng = np.random.default_rng([seed, int(m.content_hash(), 16)])
            keep = np.sort(rng.choice(n, max_cases, replace=False))
            m = Manifest([m.rows[i] for i in keep], list(m.label_names), dict(m.meta), m.source)
            # debug: the features' own line says "N of M cases" once the images are read
            log.debug("%s: %d of %d images drawn (max_cases %d)", Path(str(m.source)).name, max_cases, n, max_cases)
    return m, n


def checked_root(manifest, data_root: str | Path | None = None, split: str = DEFAULT_SPLIT,
                 max_cases: int | None = None, seed: int = 0) -> Path:
    """The root ``manifest`` is read from (``data_root``, else its recorded root, else the default), once
    every file of the rows to be used is found there; else an error naming the manifest and the root."""
    from medtl.data.manifest import data_root_for, require_files

    m = _load_manifest(manifest)
    root = data_root_for(m, data_root)
    require_files(select_cases(m, split, max_cases, seed)[0], root)
    return Path(root)


def dataset_name(manifest, index: int = 0) -> str:
    source = getattr(manifest, "source", None) if not isinstance(manifest, (str, Path)) else manifest
    return Path(source).stem if source else f"dataset{index}"


def dataset_features(manifest, data_root: str | Path, encoder, *, intensity: Mapping[str, Any] | None = None,
                     overrides: Mapping[str, Any] | None = None, split: str = DEFAULT_SPLIT,
                     max_cases: int | None = None, seed: int = 0, head=None, batch_size: int = 16,
                     device: str = "cpu", name: str | None = None, labels: bool = True) -> dict[str, Any]:
    """Features of one data set: ``{"features", "labels", "probs", "info"}``; ``info`` says which
    rows, which preset options and which view (2d / 2.5d / 3d) were used. ``labels=False``: the rows'
    labels are not read (regression targets, or a target whose labels adaptation must not see)."""
    from medtl.data.datasets import build_dataset
    from medtl.similarity.features import extract_features

    t0 = time.perf_counter()
    from medtl.data.manifest import Manifest

    m, n_available = select_cases(manifest, split, max_cases, seed)
    modality = m.modality
    opts = preset_options(modality, intensity, overrides)
    enc, view = encoder_for(encoder, modality)
    read = m if labels else Manifest([replace(r, label="unlabelled") for r in m], [], dict(m.meta), m.source)
    dataset = build_dataset(read, data_root, cache="none", **opts)
    out = extract_features(enc, dataset, head, batch_size, device)
    if not labels:
        out["labels"] = None
    counts: dict[str, int] = {}
    for r in m:
        counts[r.label] = counts.get(r.label, 0) + 1
    out["info"] = {
        "name": name or dataset_name(manifest),
        "manifest": str(m.source) if m.source else None,
        "modality": modality,
        "split": split,
        "n_available": n_available,
        "n_cases": len(m),
        "labels": counts,
        "preset_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()},
        "view": view,
        "view_note": VIEW_NOTE[view],
        # sum of the per-feature variances (= trace of the covariance): the spread the Frechet distance sees
        "feature_total_variance": float(out["features"].var(0, ddof=1).sum()) if len(m) > 1 else None,
        "feature_seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("%s: %d of %d cases, %d features (%s view, %.1f s)", out["info"]["name"], len(m), n_available,
             out["features"].shape[1], view, out["info"]["feature_seconds"])
    return out


def _intensity(info: Mapping[str, Any]) -> Mapping[str, Any] | None:
    intensity = info.get("intensity")
    return intensity if isinstance(intensity, Mapping) else None


def _view_notes(infos: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{i['name']}: {i['view_note']}" for i in infos if i["view"] != "2d"]


# --- source vs target -------------------------------------------------------------------------------


def compare_manifests(
    source,
    target,
    data_root: str | Path | None = None,
    encoder: str | Path | None = None,
    *,
    split: str = DEFAULT_SPLIT,
    max_cases: int | None = None,
    image_size: int | None = None,
    spacing: Sequence[float] | None = None,
    volume_shape: Sequence[int] | None = None,
    crop: str | None = None,
    n_permutations: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    save_features: str | Path | None = None,
    progress: bool = True,
    source_root: str | Path | None = None,
    target_root: str | Path | None = None,
    arch: str = DEFAULT_ARCH,
    stem_stride: int = 2,
    target_labels: bool = True,
    return_features: bool = False,
) -> dict[str, Any]:
    """Domain distances (and, with labels, transferability) between two manifests' images.

    Each manifest is read from its own root: ``source_root`` / ``target_root``, else ``data_root``,
    else the root its .meta.json records, else the default; every file is checked to exist first.

    ``split``: the rows of each manifest used (default ``"train"``: LogME, H-score and LEEP read the target's
    labels, which must not come from its test images; ``"all"``: every row).

    ``encoder``: a medtl checkpoint, or None for the untrained default (see :func:`load_encoder`;
    ``arch`` and ``stem_stride`` choose it). With a classification head, its softmax on the target
    images gives LEEP. ``target_labels=False``: the target's labels are not read (no transferability
    score from them). Returns the :func:`medtl.similarity.assess.assess` dictionary plus ``encoder`` and
    ``datasets`` entries, and with ``return_features`` the arrays under ``features`` (source, target, and the
    target's labels and source-model probabilities, None when there are none).
    """
    from medtl.similarity.assess import assess

    t0 = time.perf_counter()
    source, target = _load_manifest(source), _load_manifest(target)
    src_root = checked_root(source, source_root or data_root, split, max_cases, seed)
    tgt_root = checked_root(target, target_root or data_root, split, max_cases, seed)
    enc, head, enc_info = load_encoder(encoder, device=device, arch=arch, stem_stride=stem_stride)
    overrides = {"image_size": image_size, "spacing": spacing, "volume_shape": volume_shape, "crop": crop}
    common = {"intensity": _intensity(enc_info), "overrides": overrides, "split": split, "max_cases": max_cases,
              "seed": seed, "batch_size": batch_size, "device": device}
    steps = bar(total=3, desc="similarity", unit="step", enabled=progress)  # source, target features; the scores
    src = dataset_features(source, src_root, enc, name=dataset_name(source, 0), **common)
    steps.update()
    tgt = dataset_features(target, tgt_root, enc, head=head, name=dataset_name(target, 1), labels=target_labels,
                           **common)
    steps.update()
    if save_features:
        labels = tgt["labels"]
        # source_probs (the encoder's own head on the target images) is what LEEP needs in the array mode
        np.savez(save_features, source=src["features"], target=tgt["features"],
                 target_labels=labels if labels is not None else np.zeros(0),
                 **({"source_probs": tgt["probs"]} if tgt["probs"] is not None else {}))
    result = assess(src["features"], tgt["features"], tgt["labels"], source_model_probs=tgt["probs"],
                    n_permutations=n_permutations, seed=seed)
    steps.update()
    steps.close()
    result["encoder"] = dict(enc_info)
    result["datasets"] = {"source": src["info"], "target": tgt["info"]}
    notes = []
    if not enc_info["trained"]:
        notes.append(enc_info["description"])
    notes += _view_notes([src["info"], tgt["info"]])
    result["notes"] = notes + result["notes"]
    result["wall_seconds"] = round(time.perf_counter() - t0, 2)
    if return_features:
        result["features"] = {"source": src["features"], "target": tgt["features"], "target_labels": tgt["labels"],
                              "target_probs": tgt["probs"]}
    return result


# --- the matrix -------------------------------------------------------------------------------------


def _pair_metrics(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int, max_rows: int | None) -> dict:
    from medtl.similarity.distances import frechet_distance, mmd_test, proxy_a_distance

    test = mmd_test(a, b, n_permutations=n_permutations, seed=seed, max_rows=max_rows)
    pad = proxy_a_distance(a, b, seed=seed)
    return {"mmd2": test["mmd2"], "mmd_p_value": test["p_value"], "proxy_a_distance": pad["pad"],
            "domain_error": pad["error"], "frechet": frechet_distance(a, b),
            "frechet_mean_term": float(np.sum((a.mean(0) - b.mean(0)) ** 2))}


def _split_half(x: np.ndarray, n_permutations: int, seed: int, max_rows: int | None) -> dict | None:
    if len(x) < 4:
        return None
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    return _pair_metrics(x[order[:half]], x[order[half:2 * half]], n_permutations, seed, max_rows)


def similarity_matrix(
    manifests: Sequence[Any] | Mapping[str, Any],
    data_root: str | Path | None = None,
    encoder: str | Path | None = None,
    *,
    split: str = DEFAULT_SPLIT,
    max_cases: int | None = None,
    image_size: int | None = None,
    spacing: Sequence[float] | None = None,
    volume_shape: Sequence[int] | None = None,
    crop: str | None = None,
    n_permutations: int = 200,
    max_rows: int | None = 1000,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    self_reference: bool = True,
    save_features: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """MMD^2 (+ permutation p-value), proxy A-distance and Frechet distance for every pair of data sets.

    ``manifests``: paths / Manifests (named by file stem), or ``{name: manifest}``. Features are
    extracted once per data set with one encoder (``encoder`` checkpoint, or the untrained default).
    ``metrics[m]`` is a symmetric matrix (lists, rows/cols in ``names`` order); its diagonal holds,
    with ``self_reference``, the same measure between two random halves of that data set (a
    sampling-noise reference at half the size), else None.
    """
    t0 = time.perf_counter()
    if isinstance(manifests, Mapping):
        named = list(manifests.items())
    else:
        named = [(dataset_name(m, i), m) for i, m in enumerate(manifests)]
    if len(named) < 2:
        raise MedtlError(f"a matrix needs at least two data sets, got {len(named)}", "manifests")
    names: list[str] = []
    for name, _ in named:  # unique names: a repeated stem gets a suffix
        candidate, k = name, 2
        while candidate in names:
            candidate, k = f"{name}_{k}", k + 1
        names.append(candidate)
    # every data set from its own root (data_root, else the one its manifest records), files checked first
    named = [(name, _load_manifest(m)) for name, m in named]
    roots = [checked_root(m, data_root, split, max_cases, seed) for _, m in named]
    enc, _, enc_info = load_encoder(encoder, device=device)
    overrides = {"image_size": image_size, "spacing": spacing, "volume_shape": volume_shape, "crop": crop}
    feats, infos = {}, []
    k = len(names)
    # one bar: a step per data set's features, then one per pair (and per diagonal reference)
    steps = bar(total=k + k * (k - 1) // 2 + (k if self_reference else 0), desc="similarity", unit="step",
                enabled=progress)
    for name, (_, manifest), root in zip(names, named, roots):
        out = dataset_features(manifest, root, enc, intensity=_intensity(enc_info), overrides=overrides, split=split,
                               max_cases=max_cases, seed=seed, batch_size=batch_size, device=device, name=name)
        feats[name] = out["features"]
        infos.append(out["info"])
        steps.update()
    t_feat = time.perf_counter() - t0
    keys = list(MATRIX_METRICS) + ["domain_error"]
    mats: dict[str, list[list[float | None]]] = {m: [[None] * k for _ in range(k)] for m in keys}
    pairs = []
    for i in range(k):
        for j in range(i, k):
            if i == j:
                values = _split_half(feats[names[i]], n_permutations, seed, max_rows) if self_reference else None
            else:
                values = _pair_metrics(feats[names[i]], feats[names[j]], n_permutations, seed, max_rows)
                pairs.append({"a": names[i], "b": names[j], **values})
            for m in keys:
                v = None if values is None else float(values[m])
                mats[m][i][j] = mats[m][j][i] = v
            steps.update(int(i != j or self_reference))
    steps.close()
    notes = []
    if not enc_info["trained"]:
        notes.append(enc_info["description"])
    notes += _view_notes(infos)
    if self_reference:
        notes.append("diagonal (in brackets in the tables): the same measure between two random halves of one "
                     "data set, a reference for sampling noise at half the sample size")
    if max_rows is not None and any(len(f) > max_rows for f in feats.values()):
        notes.append(f"MMD computed on at most {max_rows} random rows per data set")
    if save_features:
        np.savez(save_features, **{n: feats[n] for n in names})
    return {
        "version": 1,
        "kind": "similarity-matrix",
        "names": names,
        "encoder": dict(enc_info),
        "datasets": infos,
        "metrics": mats,
        "metric_meaning": dict(MATRIX_METRICS) | {
            "domain_error": "balanced held-out error of the domain classifier",
            "frechet_mean_term": "(in pairs) the ||mu_a - mu_b||^2 part of the Frechet distance; the rest is the "
                                 "covariance part",
        },
        "pairs": pairs,
        "n_features": int(next(iter(feats.values())).shape[1]),
        "settings": {"split": split, "max_cases": max_cases, "mmd_permutations": n_permutations,
                     "mmd_max_rows": max_rows, "seed": seed, "pad": "logistic regression, 5-fold, balanced error",
                     "self_reference": self_reference},
        "notes": notes,
        "wall_seconds": {"features": round(t_feat, 2), "total": round(time.perf_counter() - t0, 2)},
    }


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric == "mmd_p_value":
        return f"{value:.3f}"
    if metric == "proxy_a_distance":
        return f"{value:.2f}"
    return f"{value:.4g}"


def matrix_tables(result: Mapping[str, Any], markdown: bool = False) -> str:
    """One table per metric, rows and columns = data sets; the diagonal (split-half reference) in
    brackets. Plain aligned text, or Markdown with ``markdown=True``."""
    names = list(result["names"])
    enc = result["encoder"]
    sizes = ", ".join(f"{d['name']} n={d['n_cases']}" + (" (2.5D)" if d["view"] == "2.5d" else "")
                      for d in result["datasets"])
    head = [f"encoder: {enc['description']}", f"data sets: {sizes}; features={result['n_features']}"]
    blocks = ["\n\n".join(head) if markdown else "\n".join(head)]
    for metric, meaning in MATRIX_METRICS.items():
        mat = result["metrics"][metric]
        cells = [[(f"[{_fmt(mat[i][j], metric)}]" if i == j and mat[i][j] is not None else _fmt(mat[i][j], metric))
                  for j in range(len(names))] for i in range(len(names))]
        if markdown:
            lines = [f"**{meaning}**", "", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            lines += [f"| {names[i]} | " + " | ".join(cells[i]) + " |" for i in range(len(names))]
        else:
            width0 = max(len(n) for n in names)
            widths = [max(len(names[j]), *(len(cells[i][j]) for i in range(len(names)))) for j in range(len(names))]
            lines = [meaning, " " * width0 + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
            lines += [names[i].ljust(width0) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells[i], widths))
                      for i in range(len(names))]
        blocks.append("\n".join(lines))
    blocks.append("\n".join(f"note: {n}" for n in result.get("notes", []) if n != enc["description"]))
    return "\n\n".join(b for b in blocks if b)
