"""The presets' faster transforms compute MONAI's own values, on real images.

``PercentileScale`` (one ``np.percentile`` call instead of two ``torch.quantile`` sorts) and
``NonzeroZScore`` (masked sums instead of gathering the nonzero voxels) replace MONAI's transforms
inside the presets, so training and inference both use them; here they are checked against the MONAI
transforms they replace, on real PNG, JPEG, DICOM and NIfTI data.
"""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles

from medtl.data import io
from medtl.data.transforms import NonzeroZScore, PercentileScale, preset

pytestmark = pytest.mark.real_data


def _pictures(data_root):
    files = (sorted((data_root / "cxr_nih").rglob("*.png"))[:4] + sorted((data_root / "cxr_kermany").rglob("*.jp*g"))[:2]
             + sorted((data_root / "mri2d_tumor4").rglob("*.jp*g"))[:3])
    assert len(files) == 9
    return [torch.from_numpy(io.read_picture(f).array)[None] for f in files]


def test_percentile_scale_equals_monai(data_root):
    dicom = next((data_root / "dicom").rglob("*.dcm"))
    images = _pictures(data_root) + [torch.from_numpy(np.asarray(io.read_dicom(dicom).array, dtype=np.float32))[None]]
    for lower, upper in ((0.5, 99.5), (5.0, 95.0)):
        fast = PercentileScale(lower, upper, 0.0, 1.0, clip=True)
        ref = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True)
        for img in images:
            a, b = fast(img), ref(img)
            assert a.shape == b.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
            torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=1e-5, rtol=1e-5)
        # a MetaTensor stays a MetaTensor with its metadata, as with MONAI's transform
        meta = MetaTensor(images[0], meta={"filename_or_obj": "x.png"})
        out = fast(meta)
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.png"


def test_nonzero_z_score_equals_monai(data_root):
    volumes = sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[:2]
    images = [torch.from_numpy(np.asarray(io.read_nifti(v).array, dtype=np.float32))[None] for v in volumes]
    images += [img * (img > img.mean()) for img in _pictures(data_root)[:3]]  # 2D, with a zero background
    ref = NormalizeIntensity(nonzero=True)
    for img in images:
        assert 0 < int((img == 0).sum()) < img.numel()  # both kinds of voxel are there
        a, b = NonzeroZScore()(img), ref(img)
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=2e-5, rtol=1e-5)
        assert torch.equal(a == 0, img == 0)  # the background stays zero
    assert torch.equal(NonzeroZScore()(torch.zeros(1, 4, 4)), torch.zeros(1, 4, 4))  # all zero: unchanged


def test_presets_use_them():
    det2d, _ = preset("cxr", False)
    assert [type(getattr(t, "scaler", None)).__name__ for t in det2d].count("PercentileScale") == 1
    det3d, _ = preset("mri3d", False)
    assert [type(getattr(t, "normalizer", None)).__name__ for t in det3d].count("NonzeroZScore") == 1


def test_cached_items_equal_the_tracked_chain_also_from_threads(data_root):
    """Datasets cache plain tensors through ``Guarded`` (metadata tracking off after the loader and
    resampling); the values equal the whole preset chain run with tracking, also when the cache fills
    from several threads (the 3D chain's resampling reads the affine that the switch could strip)."""
    from concurrent.futures import ThreadPoolExecutor

    from monai.transforms import Compose

    from medtl.data.datasets import Guarded

    cases = [("mri2d", {"image_size": 64}, sorted((data_root / "mri2d_tumor4").rglob("*.jp*g"))[:6]),
             ("mri3d", {"spacing": (4.0, 4.0, 4.0), "volume_shape": (40, 48, 40)},
              sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[:3])]
    for name, options, files in cases:
        det, _ = preset(name, False, **options)
        reference = [Compose(det)({"image": str(f)})["image"] for f in files]
        guarded = Guarded(det)
        with ThreadPoolExecutor(3) as pool:
            items = list(pool.map(lambda f: guarded({"image": str(f)}), files * 3))
        for i, item in enumerate(items):
            assert type(item["image"]) is torch.Tensor and item["image"].is_contiguous()
            torch.testing.assert_close(item["image"], torch.as_tensor(reference[i % len(files)]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [
    {"prob": 0.5, "rotate_range": 0.17, "scale_range": 0.1, "translate_range": 8, "padding_mode": "border"},  # mri2d/cxr
    {"prob": 0.9, "rotate_range": 0.3, "scale_range": (0.1, 0.2), "translate_range": (5, 9), "shear_range": 0.1,
     "padding_mode": "zeros"},
    {"prob": 1.0, "rotate_range": 0.4, "padding_mode": "reflection"},  # MONAI's default padding
    {"prob": 0.5, "rotate_range": 0.4, "padding_mode": "constant"},  # numpy-style name: MONAI's own code runs
])
def test_fast_rand_affine_equals_monai_draw_for_draw(data_root, options):
    """Seeded alike, FastRandAffined gives MONAI's RandAffined images, item after item (same random
    streams), on real images of the presets' size, square and not."""
    from monai.transforms import RandAffined

    from medtl.data.transforms import FastRandAffined, untracked_meta

    images = [torch.nn.functional.interpolate(img[None].float(), size=size, mode="area")[0]
              for img in _pictures(data_root) for size in ((128, 128), (96, 112))]
    ref = RandAffined(["image"], **options).set_random_state(7)
    fast = FastRandAffined(["image"], **options).set_random_state(7)
    moved = 0
    with untracked_meta():
        for img in images * 3:
            a, b = ref({"image": img})["image"], fast({"image": img})["image"]
            assert type(b) is torch.Tensor and b.dtype == torch.float32
            torch.testing.assert_close(torch.as_tensor(a), b, atol=1e-4 * float(img.abs().max()), rtol=1e-4)
            moved += not torch.equal(b, img)
    assert moved > 0 and (moved < len(images) * 3 or options["prob"] > 0.5)  # with prob 0.5 some, not all
    # a MetaTensor (metadata tracked) goes to MONAI's own code and keeps its metadata
    out = fast({"image": MetaTensor(images[0], meta={"filename_or_obj": "x.png"})})["image"]
    assert isinstance(out, MetaTensor)
