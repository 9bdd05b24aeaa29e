"""Data layer: manifests, readers, MONAI preset transform chains and datasets.

The names below are imported on first use, so ``medtl.data.manifest`` (a CSV and its columns) loads without
MONAI and torch."""

from __future__ import annotations

__all__ = ["Manifest", "ManifestRow", "build_dataset"]


def __getattr__(name: str):
    if name == "build_dataset":
        from medtl.data.datasets import build_dataset

        return build_dataset
    if name in ("Manifest", "ManifestRow"):
        from medtl.data import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'medtl.data' has no attribute {name!r}")
