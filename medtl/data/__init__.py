"""Data layer: manifests, readers, MONAI preset transform chains and datasets."""

from medtl.data.datasets import build_dataset
from medtl.data.manifest import Manifest, ManifestRow

__all__ = ["Manifest", "ManifestRow", "build_dataset"]
