"""The mri3d field of view: ``CropToHead`` against slicing computed by hand, on real IXI heads, and the
versioned record that keeps older checkpoints on the centre crop they were trained with."""

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medtl.data.transforms import CropToHead, preset, recorded_options
from medtl.errors import MedtlError


def _head_volume(rng) -> np.ndarray:
    """(1, 60, 70, 100): a bright box (the head) at x 10-39, y 20-59, z 5-94 over faint noise, with
    single bright specks in the background that must not move the box."""
    v = rng.random((1, 60, 70, 100)).astype(np.float32) * 0.05
    v[0, 10:40, 20:60, 5:95] = 1.0 + rng.random((30, 40, 90)).astype(np.float32)
    v[0, 55, 2, 98] = v[0, 1, 68, 0] = 3.0
    return v


def test_a_tall_head_keeps_its_top_and_is_centred_across():
    v = _head_volume(np.random.default_rng(0))
    out = CropToHead((20, 30, 40))(torch.from_numpy(v))
    # x: head centre 25 -> 15..35; y: centre 40 -> 25..55; z: 90 tall > 40 -> the top 40, 55..95
    np.testing.assert_array_equal(out.numpy(), v[:, 15:35, 25:55, 55:95])


def test_a_fill_value_corner_does_not_move_the_head_and_no_head_is_centred():
    v = _head_volume(np.random.default_rng(2))
    v[0, :4, :4, :4] = -5.0  # a resampler's fill value in one corner
    out = CropToHead((20, 30, 40))(torch.from_numpy(v))
    np.testing.assert_array_equal(out.numpy(), v[:, 15:35, 25:55, 55:95])
    flat = np.full((1, 60, 70, 100), 7.0, np.float32)  # nothing stands out: no head, the volume's centre
    flat[0, 0, 0, 0] = 8.0
    assert CropToHead((20, 30, 40)).head_box(torch.from_numpy(flat)) == [None, None, None]
    np.testing.assert_array_equal(CropToHead((20, 30, 40))(torch.from_numpy(flat)).numpy(), flat[:, 20:40, 20:50, 30:70])


def test_a_small_head_is_centred_and_padded_with_zeros():
    v = _head_volume(np.random.default_rng(1))
    out = CropToHead((50, 50, 120))(torch.from_numpy(v)).numpy()
    ref = np.zeros((1, 50, 50, 120), np.float32)
    # x: centre 25 -> 0..50; y: centre 40 -> 15..65; z: 90 fits in 120: centre 50 -> -10..110, 10 zeros below
    ref[:, :, :, 10:110] = v[:, 0:50, 15:65, 0:100]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.real_data
def test_the_preset_chain_keeps_the_top_of_real_heads(data_root):
    """IXI heads are taller than the default 160 mm: the centre crop cut 2-30 mm off their top (the cortex),
    the head crop none, and the brain below it (cerebellum) stays inside."""
    files = sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[:6]
    resampled = Compose(preset("mri3d", False)[0][:3])  # load, RAS, 2 mm: before any crop
    head_crop, centre_crop = Compose(preset("mri3d", False)[0]), Compose(preset("mri3d", False, crop="center")[0])
    cut_by_centre = []
    for f in files:
        v = resampled({"image": str(f)})["image"][0].as_tensor()
        first, last = CropToHead((80, 96, 80)).head_box(v[None])[2]
        assert last - first > 80  # taller than the field of view: the case the crop decides
        new = head_crop({"image": str(f)})["image"]
        old = centre_crop({"image": str(f)})["image"]
        assert new.shape == old.shape == (1, 80, 96, 80)
        # the head's top slice is the window's top slice: nothing above it is lost
        np.testing.assert_array_equal(new[0, :, :, -1] != 0, (v[:, :, last - 1] != 0)[_window(v, 0, 80),
                                                                                      _window(v, 1, 96)])
        cut_by_centre.append(last - (v.shape[2] - 80) // 2 - 80)
    assert max(cut_by_centre) >= 5  # at 2 mm: the centre crop lost at least 10 mm of one head's top


def _window(v: torch.Tensor, axis: int, size: int) -> slice:
    first, last = CropToHead((80, 96, 80)).head_box(v[None])[axis]
    start = (first + last) // 2 - size // 2
    assert 0 <= start and start + size <= v.shape[axis]  # inside the volume for IXI in x and y
    return slice(start, start + size)


def test_a_record_without_the_option_keeps_the_chain_it_was_trained_with():
    # before crop existed (and when a pipeline recorded only the options its config set)
    assert recorded_options({"preset": "mri3d"}) == {"preset": "mri3d", "spacing": (2.0, 2.0, 2.0),
                                                      "volume_shape": (80, 96, 80), "crop": "center"}
    assert recorded_options({"preset": "mri3d", "volume_shape": [64, 64, 64], "crop": "head"})["crop"] == "head"
    assert recorded_options({"preset": "cxr", "image_size": 64}) == {"preset": "cxr", "image_size": 64,
                                                                       "clahe": False}
    with pytest.raises(MedtlError, match="crop must be one of \\['head', 'center'\\], got 'top'"):
        preset("mri3d", False, crop="top")


def test_an_older_3d_checkpoint_is_read_with_the_centre_crop_and_one_written_now_with_the_head_crop(tmp_path):
    from medtl.deploy.inputs import SeriesLoader
    from medtl.deploy.model import load_model
    from medtl.models import Head, Model, build_encoder, save_checkpoint

    enc = build_encoder("resnet10", spatial_dims=3)
    model = Model(enc, Head(enc.out_features, "binary"))
    # written now with only the options given: the record holds every option, as the chain ran
    new = save_checkpoint(tmp_path / "new.pt", model, intensity={"preset": "mri3d", "volume_shape": [16, 16, 16]},
                          label_names=["F", "M"])
    assert torch.load(new, weights_only=True)["meta"]["intensity"]["crop"] == "head"
    assert load_model(new, device="cpu", threshold=0.5).preset_options["crop"] == "head"
    # as an older medtl wrote it: no crop (and, from a pipeline, no spacing either)
    obj = torch.load(new, weights_only=True)
    obj["meta"]["intensity"] = {"preset": "mri3d", "volume_shape": [16, 16, 16]}
    torch.save(obj, tmp_path / "old.pt")
    p = load_model(tmp_path / "old.pt", device="cpu", threshold=0.5)
    assert p.preset_options == {"spacing": (2.0, 2.0, 2.0), "volume_shape": [16, 16, 16], "crop": "center"}
    loader = SeriesLoader(p.preset, p.preset_options, p.spatial_dims)
    assert [type(t).__name__ for t in loader.steps.untracked] == ["NormalizeIntensityd", "ResizeWithPadOrCropd"]


@pytest.mark.real_data
def test_background_noise_of_a_raw_scan_does_not_make_the_head_the_whole_volume(data_root):
    """Rician background noise at 4% of the tissue's brightness (a raw, unmasked scan) passed the brightness
    threshold in every slice: the box became the whole volume and, with air above the head, the window kept
    32 mm of air and cut the cerebellum. The mean filter and the largest blob find the clean head's box."""
    f = sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[0]
    v = Compose(preset("mri3d", False)[0][:3])({"image": str(f)})["image"].as_tensor().float()
    clean = CropToHead((80, 96, 80)).head_box(v)
    air = torch.nn.functional.pad(v, (0, 20))  # 40 mm of air above the head
    rng = np.random.default_rng(0)
    sigma = 0.04 * float(torch.quantile(v.flatten()[::7], 0.99))
    noise = rng.normal(0, sigma, (2, *air.shape)).astype(np.float32)
    noisy = torch.from_numpy(np.hypot(air.numpy() + noise[0], noise[1]))  # magnitude image: Rician
    # the threshold alone, as the crop was: more than 1% of the fullest slice's count in every slice
    lo, hi = (float(q) for q in torch.quantile(noisy.flatten()[::64], torch.tensor([0.01, 0.99])))
    counts = (noisy[0] > lo + 0.1 * (hi - lo)).sum(dim=(0, 1))
    assert bool((counts >= 0.01 * counts.max()).all())
    box = CropToHead((80, 96, 80)).head_box(noisy)
    assert all(abs(a - b) <= 1 for got, want in zip(box, clean) for a, b in zip(got, want)), (box, clean)
    out = CropToHead((80, 96, 80))(noisy)
    assert box[2][1] - box[2][0] > 80  # a tall head: the window's top is the head's top, not the air above it
    np.testing.assert_array_equal(out[0, :, :, -1].numpy(), noisy[0, :, :, box[2][1] - 1].numpy()[
        _window(v[0], 0, 80), _window(v[0], 1, 96)])
