"""medtl.pipeline.train helpers that need no training (the end-to-end chain is in tests/cli/test_train.py)."""

import pytest

from medtl.errors import MedtlError
from medtl.engine.pretrain import check_resumable
from medtl.pipeline.train import _init_defaults


def _checkpoint(tmp_path, dims, **meta):
    from medtl.models.checkpoint import Model, save_checkpoint
    from medtl.models.encoders import build_encoder
    from medtl.models.heads import Head

    enc = build_encoder("resnet10", spatial_dims=dims, stem_stride=1)
    return save_checkpoint(tmp_path / f"m{dims}.pt", Model(enc, Head(enc.out_features, "binary", 2)), **meta)


def test_init_checkpoint_gives_architecture_and_size(tmp_path):
    three = _checkpoint(tmp_path, 3, intensity={"preset": "mri3d", "volume_shape": [16, 20, 16]}, image_size=[16, 20, 16])
    assert _init_defaults(three) == {"arch": "resnet10", "stem_stride": 1, "image_size": [16, 20, 16], "spatial_dims": 3,
                                    "spacing": [2.0, 2.0, 2.0]}  # the voxel size goes with the input size
    two = _checkpoint(tmp_path, 2, intensity={"preset": "cxr", "image_size": 48}, image_size=48)
    assert _init_defaults(two)["image_size"] == 48 and _init_defaults(two)["spatial_dims"] == 2
    assert _init_defaults(None) == {}


def test_resuming_is_refused_when_data_or_settings_differ(tmp_path):
    key = {"train": "abc", "seed": 0, "image_size": [16, 16, 16]}
    check_resumable(tmp_path, True, key, "run.json")
    (tmp_path / "last.pt").write_bytes(b"")
    check_resumable(tmp_path, True, dict(key), "run.json")  # the same: resumes (tuples and lists alike)
    with pytest.raises(MedtlError, match=r'a run with other seed \(0 there, 1 now\), train \("abc" there, "def" now\); '
                                         r"use a new folder \(--out"):
        check_resumable(tmp_path, True, {**key, "train": "def", "seed": 1}, "run.json")
    check_resumable(tmp_path, False, {**key, "seed": 1}, "run.json")  # --no-resume starts over and records the new inputs
    with pytest.raises(MedtlError, match="other seed"):
        check_resumable(tmp_path, True, key, "run.json")


def test_an_older_3d_checkpoint_without_spacing_starts_training_at_the_2_mm_it_was_trained_at(tmp_path):
    """A record without spacing was written by a medtl that used 2 mm (what predict reads it with); --init with
    it took the field-of-view rule instead (4 mm at 40 48 40) and trained on other voxels (diff review)."""
    import torch

    path = _checkpoint(tmp_path, 3, intensity={"preset": "mri3d", "volume_shape": [40, 48, 40]}, image_size=[40, 48, 40])
    obj = torch.load(path, weights_only=True)
    del obj["meta"]["intensity"]["spacing"]
    torch.save(obj, path)
    assert tuple(_init_defaults(path)["spacing"]) == (2.0, 2.0, 2.0)
