"""Self-supervised source pretraining from manifests: ``medtl pretrain --mode moco``.

``pretrain_ssl(manifests, data_root, out)`` reads the ``splits`` rows of one or several manifests
(labels ignored; each manifest through its own modality preset and view augmentations, see
medtl.data.views), trains MoCo v2 (medtl.strategies.ssl) with the project's trainer, and writes
``<out>/model.pt``: ``encoder.*`` (what transfers) and the projection ``head.*`` (dropped on transfer).
Resumable like every trainer run (``<out>/last.pt``). There is no validation split: the contrastive
loss of held-out images says little about transfer; the run keeps its last epoch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from medtl.errors import MedtlError


def pretrain_ssl(
    manifests,
    data_root: str | Path | None,
    out: str | Path,
    *,
    mode: str = "moco",
    image_size: int | list[int] = 128,
    splits: list[str] | tuple[str, ...] | None = None,
    cache: str = "memory",
    on_error: str = "raise",
    views: dict[str, Any] | None = None,
    **options,
):
    """Pretrain on unlabelled images; ``options`` as :func:`medtl.engine.pretrain.pretrain_on`,
    ``views`` overrides entries of the view presets (medtl.data.views.VIEW_PRESETS)."""
    from medtl.data.transforms import DEFAULTS as PRESET_DEFAULTS
    from medtl.data.views import views_dataset
    from medtl.engine.pretrain import pretrain_on

    splits = list(splits or ["train"])
    out = Path(out)
    dataset, info = views_dataset(manifests, data_root, image_size=image_size, splits=splits, cache=cache,
                                  on_error=on_error, run_dir=out, **(views or {}))
    parts = info["parts"]
    if len(dataset) == 0:
        raise MedtlError("no readable images to pretrain on", "manifests")
    first = parts[0]
    spatial_dims = first["dims"]
    size = list(first["preset_options"].get("volume_shape") or [first["preset_options"]["image_size"]] * 2)
    h = hashlib.sha256("\n".join(p["hash"] for p in parts).encode()).hexdigest()[:16]
    meta = {
        # the deterministic chains of cxr and mri2d are the same (no CLAHE): the first manifest's preset
        # describes how every image was normalised
        "intensity": {"preset": first["modality"], **PRESET_DEFAULTS[first["modality"]], **first["preset_options"]},
        "manifest_hash": h,
        "manifest": first["manifest"] if len(parts) == 1 else [p["manifest"] for p in parts],
        "domains": sorted({d for p in parts for d in p["domains"]}),
        "ssl_data": [{k: p[k] for k in ("manifest", "modality", "splits", "items", "hash")} for p in parts],
    }
    options.pop("preset", None)  # each manifest uses its own modality
    options.pop("train_split", None)
    options.pop("val_split", None)
    return pretrain_on(dataset, None, out, label_names=None, mode=mode, spatial_dims=spatial_dims,
                       image_size=size if spatial_dims == 3 else size[0], meta=meta, **options)
