"""A tiny synthetic pipeline (12 images a side, 16 px) for the command-line tests."""

import pytest

from medtl.data.build import build_manifest
from medtl.data.synthetic import write_synthetic_source

CONFIG = """\
name: tiny
seeds: [0]
source: {manifest: manifests/src.csv, image_size: 32}
pretrain: {epochs: 1, batch_size: 8}
target: {manifest: manifests/tgt.csv, image_size: 32}
tasks: [{name: tumor}]
encoder: {arch: resnet10}
train: {epochs: 1, batch_size: 8, patience: null, device: cpu}
strategies: [feature_extraction, full]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    for name, kind, seed in (("src", "cxr", 0), ("tgt", "mri2d", 1)):
        raw = write_synthetic_source(root / "data" / name, kind, 12, seed=seed, size=16)
        build_manifest(raw, root / "data", seed=0, group_near_copies=False).save(root / "manifests" / f"{name}.csv")
    return root


@pytest.fixture
def config() -> str:
    """The tiny pipeline's YAML; its paths are relative to the ``tiny`` folder the test writes it into."""
    return CONFIG
