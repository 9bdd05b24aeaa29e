"""Two-view augmentation for self-supervised pretraining (medtl.data.views)."""

import numpy as np
import pytest
import torch

from medtl.data.views import RandGaussianBlurd, RandResizedCropd, TwoViews, ViewsDataset, view_chain, views_dataset
from medtl.errors import MedtlError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth(seed, shape=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, *(s // 4 for s in shape), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    x = torch.nn.functional.interpolate(x, size=shape, mode=mode, align_corners=False)[0]
    return (x - x.mean()) / x.std()


def _corr(a, b):
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_two_views_differ_but_come_from_the_same_image():
    images = [_smooth(s) for s in range(4)]
    ds = ViewsDataset([{"image": x, "case_id": f"c{i}"} for i, x in enumerate(images)],
                      TwoViews(view_chain("cxr", 32, crop_scale=(1.0, 1.0), rotate_deg=0.0)))
    ds.transform.set_random_state(0)
    for i, x in enumerate(images):
        item = ds[i]
        v1, v2 = item["image"], item["image_2"]
        assert v1.shape == v2.shape == x.shape and item["case_id"] == f"c{i}" and int(item["label"]) == -1
        assert not torch.allclose(v1, v2, atol=1e-3)  # independent draws
        others = [_corr(v1, y) for j, y in enumerate(images) if j != i]
        # only intensity changes here: each view still looks like its own image, not like the others
        assert _corr(v1, x) > 0.8 and _corr(v2, x) > 0.8 and max(others) < _corr(v1, x) - 0.3


def test_the_full_preset_keeps_the_pair_related():
    x = _smooth(7, (48, 48))
    two = TwoViews(view_chain("mri2d", 48))
    two.set_random_state(3)
    pairs = [two({"image": x}) for _ in range(20)]
    assert all(p["image"].shape == (1, 48, 48) and torch.isfinite(p["image"]).all() for p in pairs)
    assert sum(not torch.allclose(p["image"], p["image_2"], atol=1e-3) for p in pairs) == 20
    # reseeding repeats the draws exactly (the trainer reseeds every epoch through set_random_state)
    two.set_random_state(3)
    again = two({"image": x})
    assert torch.equal(again["image"], pairs[0]["image"]) and torch.equal(again["image_2"], pairs[0]["image_2"])


def test_chest_xrays_are_never_flipped_brain_mri_is():
    x = torch.zeros(1, 32, 32)
    x[:, :, :16] = 1.0  # bright on the image's left: a flip puts it on the right
    def left_brighter(modality, n=40):
        chain = view_chain(modality, 32, crop_scale=(1.0, 1.0), rotate_deg=0.0, noise_prob=0.0)
        chain.set_random_state(1)
        outs = [chain({"image": x})["image"] for _ in range(n)]
        return [bool(o[:, :, :16].mean() > o[:, :, 16:].mean()) for o in outs]
    assert all(left_brighter("cxr"))
    flips = left_brighter("mri2d")
    assert 5 < flips.count(False) < 35


def test_resized_crop_samples_a_box_inside_the_image():
    # a linear ramp stays linear under crop + resize: its slope is the box's fraction of the side
    ramp = torch.linspace(-1, 1, 64)[None, None, :].repeat(1, 64, 1)
    crop = RandResizedCropd(["image"], scale=(0.25, 0.25), ratio=(1.0, 1.0))
    crop.set_random_state(0)
    for _ in range(10):
        out = crop({"image": ramp})["image"]
        row = out[0, 32]
        span = float(row[-1] - row[0]) * 64 / 63
        assert span == pytest.approx(2 * 0.5, abs=0.02)  # side fraction sqrt(0.25) of a range of 2
        assert float(out.min()) >= -1 - 1e-5 and float(out.max()) <= 1 + 1e-5
        assert torch.allclose(out[0, 0], out[0, -1], atol=1e-5)  # no rotation: every row the same
    with pytest.raises(MedtlError, match="crop scale"):
        RandResizedCropd(["image"], scale=(0.0, 1.0))


def test_rotation_turns_the_image():
    x = torch.zeros(1, 33, 33)
    x[:, 16, :] = 1.0  # a horizontal line through the centre
    crop = RandResizedCropd(["image"], scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=np.pi / 2)
    crop.set_random_state(0)
    turned = [crop({"image": x})["image"] for _ in range(20)]
    # some draws turn the line well away from the horizontal: it then leaves the centre row's far ends
    assert any(float(t[0, 16, :4].sum()) < 0.5 for t in turned)
    assert all(t[0, 16, 16] > 0.5 for t in turned)  # the centre stays on the line


def test_blur_preserves_mass_and_smooths():
    x = torch.zeros(1, 21, 21)
    x[0, 10, 10] = 1.0
    blur = RandGaussianBlurd(["image"], sigma=(1.5, 1.5), prob=1.0)
    out = blur({"image": x})["image"]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5) and float(out.max()) < 0.1
    g = np.exp(-np.arange(-4, 5) ** 2 / (2 * 1.5**2))
    g = np.outer(g, g) / np.outer(g, g).sum()  # the separable Gaussian, written out in 2D
    assert np.allclose(out[0, 6:15, 6:15].numpy(), g, atol=2e-3)


def test_three_d_views_from_the_same_code():
    x = _smooth(2, (16, 20, 16))
    two = TwoViews(view_chain("mri3d", (16, 20, 16)))
    two.set_random_state(0)
    out = two({"image": x})
    assert out["image"].shape == out["image_2"].shape == (1, 16, 20, 16)
    assert not torch.allclose(out["image"], out["image_2"])


def test_unknown_view_options_are_refused():
    with pytest.raises(MedtlError, match="unknown view option"):
        view_chain("cxr", 32, colour_jitter=0.4)
    with pytest.raises(MedtlError, match="no view preset"):
        view_chain("ct", 32)


@pytest.mark.real_data
def test_views_dataset_from_several_real_manifests(data_root, manifests_dir):
    ds, info = views_dataset([manifests_dir / "cxr_kermany.csv", manifests_dir / "cxr_actualmed.csv"], data_root,
                             image_size=32, splits=["train", "val", "test"])
    assert len(ds) == 16 + 54 and [p["modality"] for p in info["parts"]] == ["cxr", "cxr"]
    item = ds[20]
    assert item["image"].shape == item["image_2"].shape == (1, 32, 32) and int(item["label"]) == -1
    train_only, _ = views_dataset(manifests_dir / "cxr_actualmed.csv", data_root, image_size=32)
    assert 0 < len(train_only) < 54


@pytest.mark.real_data
def test_views_dataset_mixes_chest_xrays_and_brain_mri_each_with_its_own_views(data_root, manifests_dir):
    ds, info = views_dataset([manifests_dir / "cxr_kermany.csv", manifests_dir / "mri2d_yesno.csv"], data_root,
                             image_size=32, splits=["test"])
    assert [p["modality"] for p in info["parts"]] == ["cxr", "mri2d"] and len(ds) == sum(p["items"] for p in info["parts"])
    flips = [[type(t).__name__ for t in part.transform.chain.transforms].count("RandFlipd") for part in ds.datasets]
    assert flips == [0, 1]  # the X-rays are never flipped, the brain slices may be
    assert ds[len(ds) - 1]["image_2"].shape == (1, 32, 32)
    with pytest.raises(MedtlError, match="mix 2D and 3D"):
        views_dataset([manifests_dir / "cxr_kermany.csv", manifests_dir / "mri3d_ixi.csv"], data_root, image_size=32)
