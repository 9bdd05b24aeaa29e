"""A tiny synthetic pipeline shared by the pipeline tests."""

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
train: {epochs: EPOCHS, batch_size: 8, patience: null, device: cpu}
strategies: [feature_extraction, full, dann]
label_fractions: [0.5, 1.0]
similarity: {max_images: 20}
evaluation: {bootstrap: 50}
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    data = root / "data"
    for name, kind, seed in (("src", "cxr", 0), ("tgt", "mri2d", 1)):
        raw = write_synthetic_source(data / name, kind, 30, seed=seed, shift=0.5 * seed, size=32)
        build_manifest(raw, data, seed=0, group_near_copies=False).save(root / "manifests" / f"{name}.csv")
    return root


def _config(tiny, epochs=1, name="p.yaml"):
    path = tiny / name
    path.write_text(CONFIG.replace("EPOCHS", str(epochs)))
    return path


_config.config = CONFIG




@pytest.fixture(scope="session")
def make_config():
    return _config
