"""Grad-CAM: hot where the evidence is (a model with known evidence), equal to a hand-written Grad-CAM
on resnet18s in 2D and 3D, overlays, and the deletion test of faithfulness."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import resnet18
from scipy import stats
from torch import nn

from medtl.errors import MedtlError
from medtl.evaluation.explain import (
    _peak,
    deletion_summary,
    deletion_test,
    deletion_verdict,
    gradcam,
    load_deletion_test,
    overlay_png,
    save_deletion_test,
    save_gradcam,
)

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions: faster on one thread


class Brightness(nn.Module):
    """Known evidence: the class-1 logit is ``scale`` x the mean brightness of the image, class 0 its negative.

    ``features`` (the layer explained) is a 3-wide box blur followed by 4x average pooling, so its one
    channel is a coarse copy of the image: d(logit_1)/dA is the same positive number everywhere and
    Grad-CAM for class 1 is the (upsampled) image itself: bright = evidence.
    """

    def __init__(self, dims: int, scale: float = 10.0):
        super().__init__()
        conv = (nn.Conv2d, nn.Conv3d)[dims - 2](1, 1, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1.0 / 3**dims)
        self.features = nn.Sequential(conv, (nn.AvgPool2d, nn.AvgPool3d)[dims - 2](4))
        self.scale = scale

    def forward(self, x):
        m = self.features(x).flatten(1).mean(1) * self.scale
        return torch.stack([-m, m], 1)


def blob_image(dims: int, size: int, corner: int, side: int, rng: np.random.Generator) -> torch.Tensor:
    img = rng.random((1,) + (size,) * dims) * 0.1
    img[(0,) + (slice(corner, corner + side),) * dims] += 1.0
    return torch.as_tensor(img, dtype=torch.float32)


@pytest.mark.parametrize("dims, size", [(2, 64), (3, 32)])
def test_evidence_is_hot(dims, size):
    """The bright blob, the model's only evidence for class 1, is the hottest part of the map."""
    image = blob_image(dims, size, corner=8, side=12, rng=np.random.default_rng(0))
    cam = gradcam(Brightness(dims), image, "features", class_idx=1)
    blob = (slice(10, 18),) * dims  # the blob's inside, away from the blurred edge
    far = (slice(size - 8, size),) * dims  # the far corner: dark, no evidence
    assert cam.shape == (size,) * dims
    assert cam[blob].min() > 0.8 and cam.max() == pytest.approx(1.0)
    assert cam[far].max() < 0.15  # MONAI's default postprocessing made these ~1 and the blob ~0.16
    # The 3D overlay's slices go through the blob, i.e. the strongest evidence.
    assert all(8 <= p < 20 for p in _peak(cam))
    # No class given: the predicted one (class 1: the image is bright), from the same single forward pass.
    np.testing.assert_array_equal(gradcam(Brightness(dims), image, "features"), cam)


def test_class_without_evidence_gives_an_empty_map():
    """Class 0's logit falls with brightness: no positive evidence anywhere, so the map is all 0 (not all hot)."""
    image = blob_image(2, 32, corner=4, side=8, rng=np.random.default_rng(1))
    cam = gradcam(Brightness(2), image, "features", class_idx=0)
    assert np.all(cam == 0)


def reference_gradcam(model: nn.Module, x: torch.Tensor, layer: nn.Module, class_idx: int) -> np.ndarray:
    """Grad-CAM by hand (Selvaraju et al. 2017): ReLU(sum_k mean(dy_c/dA_k) A_k), upsampled, min-max scaled."""
    store = {}
    fh = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    bh = layer.register_full_backward_hook(lambda m, gi, go: store.__setitem__("G", go[0]))
    model.eval()
    try:
        model.zero_grad()
        model(x.clone().requires_grad_(True))[0, class_idx].backward()
    finally:
        fh.remove()
        bh.remove()
    a, g = store["A"][0].detach(), store["G"][0]
    weights = g.flatten(1).mean(1)  # one weight per channel: the spatial mean of its gradient
    cam = torch.relu((weights.view(-1, *[1] * (a.ndim - 1)) * a).sum(0))
    mode = "bilinear" if cam.ndim == 2 else "trilinear"
    cam = F.interpolate(cam[None, None], size=x.shape[2:], mode=mode, align_corners=False)[0, 0]
    assert cam.max() > cam.min(), "reference map is flat: pick another seed or class"
    return ((cam - cam.min()) / (cam.max() - cam.min())).numpy()


@pytest.mark.parametrize("dims, shape", [(2, (1, 64, 64)), (3, (1, 24, 24, 24))])
def test_matches_hand_written_gradcam(dims, shape):
    torch.manual_seed(0)
    model = resnet18(spatial_dims=dims, n_input_channels=1, num_classes=2)
    image = torch.rand(shape) * 0.1
    image[(0,) + (slice(4, 14),) * dims] += 1.0
    for c in (0, 1):
        cam = gradcam(model, image, "layer3", class_idx=c)
        ref = reference_gradcam(model, image[None], model.layer3, c)
        np.testing.assert_allclose(cam, ref, atol=1e-5)
        assert np.corrcoef(cam.ravel(), ref.ravel())[0, 1] > 0.999  # not 1 - ref, as before the fix


@pytest.mark.parametrize("method", ["acs", "i3d"])
def test_a_2d_encoder_lifted_to_3d_is_explained_on_the_volume(method):
    """A pipeline's lifted model reads volumes although its weights came from 2D: ACS keeps no Conv3d at all
    (explain had refused it, 'no 2D or 3D convolution'). Its map is the hand-written Grad-CAM's."""
    from medtl.models import Head, Model, build_encoder
    from medtl.models.lift import lift

    torch.manual_seed(0)
    enc = lift(build_encoder("resnet10", spatial_dims=2, in_channels=1), method)
    model = Model(enc, Head(enc.out_features, "binary", 2)).eval()
    image = torch.rand(1, 32, 40, 32) * 0.1
    image[0, 8:20, 10:24, 8:20] += 1.0
    cams = [gradcam(model, image, "encoder.layer2", class_idx=c) for c in (0, 1)]
    assert all(cam.shape == (32, 40, 32) for cam in cams)
    compared = [c for c in (0, 1) if cams[c].max() > 0]  # a class with no positive evidence has a flat map
    assert compared
    for c in compared:
        np.testing.assert_allclose(cams[c], reference_gradcam(model, image[None], model.encoder.layer2, c), atol=1e-5)


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_a_2_5d_model_is_explained_on_its_slices_stacked_into_the_volume(slice_axis):
    """A 2.5D model's 2D stage sees the slices as a batch: its activations and gradients, stacked back along the
    slice axis, are one 3D map (weights averaged over all of it), checked against that computed by hand."""
    from medtl.evaluation.explain import choose_layer, is_sliced_encoder
    from medtl.models import Head, Model, build_encoder
    from medtl.models.lift import lift

    torch.manual_seed(0)
    enc = lift(build_encoder("resnet10", spatial_dims=2, in_channels=1), "2.5d", slice_axis=slice_axis)
    assert is_sliced_encoder(enc)  # the contract explain relies on, which evaluation cannot import
    model = Model(enc, Head(enc.out_features, "binary", 2)).eval()
    image = torch.rand(1, 24, 32, 28) * 0.1
    image[0, 6:14, 10:20, 8:16] += 1.0
    layer = "encoder.encoder.layer2"
    # layer2 has stride 8 within a slice; the slices keep their full count along the slice axis
    assert choose_layer(model, image, ["encoder.encoder.layer4", "encoder.encoder.layer3", layer]) == (
        layer, (24, 4, 4) if slice_axis == 0 else (3, 4, 28))
    store = {}

    def keep(module, inputs, output):  # returns None: the output stays as it is
        store["A"] = output
        output.register_hook(lambda g: store.__setitem__("G", g))

    hook = model.encoder.encoder.layer2.register_forward_hook(keep)
    logits = model(image[None].clone().requires_grad_(True))
    c = int(logits[0].argmax())
    logits[0, c].backward()
    hook.remove()
    acts, grads = store["A"].detach(), store["G"]  # (slices, K, h, w)
    weights = grads.mean(dim=(0, 2, 3))  # one per channel, over every slice and cell
    per_slice = torch.relu((weights[None, :, None, None] * acts).sum(1))  # (slices, h, w)
    ref = F.interpolate(per_slice.movedim(0, slice_axis)[None, None], size=(24, 32, 28), mode="trilinear",
                        align_corners=False)[0, 0]
    ref = ((ref - ref.min()) / (ref.max() - ref.min())).numpy()
    model.zero_grad()
    cam = gradcam(model, image, layer)
    assert cam.shape == (24, 32, 28)
    np.testing.assert_allclose(cam, ref, atol=1e-5)
    with pytest.raises(MedtlError, match="not a stage of the 2.5D model's 2D encoder"):
        gradcam(model, image, "encoder")
    assert not is_sliced_encoder(lift(build_encoder("resnet10", spatial_dims=2, in_channels=1), "i3d"))


def test_a_2_5d_stage_is_as_fine_as_its_in_plane_grid():
    """The slices of a 2.5D stage are not pooled, so they must not make a 4x4 in-plane grid look fine (the
    rule that sends a 128 px 2D model to layer3 sends a 2.5D one there too)."""
    from medtl.evaluation.explain import choose_layer, coarse
    from medtl.models import Head, Model, build_encoder
    from medtl.models.lift import lift

    enc = lift(build_encoder("resnet10", spatial_dims=2, in_channels=1), "2.5d", slice_axis=2)
    model = Model(enc, Head(enc.out_features, "binary", 2)).eval()
    stages = ["encoder.encoder.layer4", "encoder.encoder.layer3", "encoder.encoder.layer2"]
    assert choose_layer(model, torch.zeros(1, 128, 128, 24), stages) == ("encoder.encoder.layer3", (8, 8, 24))
    assert coarse((4, 4, 24), model) and not coarse((4, 4, 24))


def test_no_hooks_left_and_mode_restored():
    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    model.train()
    for _ in range(3):
        gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx=1)
    assert model.training
    assert not model.layer3._forward_hooks and not model.layer3._backward_hooks


def test_frozen_weights_still_explained():
    """A linear-probe model has frozen encoder weights; the map must not depend on requires_grad."""
    torch.manual_seed(0)
    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    image = torch.rand(1, 48, 48)
    free = gradcam(model, image, "layer3", class_idx=1)
    for p in model.parameters():
        p.requires_grad_(False)
    np.testing.assert_allclose(gradcam(model, image, "layer3", class_idx=1), free, atol=1e-6)


@pytest.mark.parametrize("dims, shape", [(2, (1, 64, 64)), (3, (1, 24, 24, 24))])
def test_overlay_png_2d_and_3d(dims, shape):
    model = resnet18(spatial_dims=dims, n_input_channels=1, num_classes=2)
    image = torch.rand(shape)
    cam = gradcam(model, image, "layer3")
    assert overlay_png(image.numpy(), cam, title=f"{dims}D").startswith(PNG)


def test_save_gradcam_writes_png(tmp_path):
    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=3)
    path = save_gradcam(model, torch.rand(1, 1, 48, 48), tmp_path / "sub" / "cam.png", "layer3")
    assert path.read_bytes().startswith(PNG)


def test_gradcam_bad_layer_and_shape():
    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    with pytest.raises(MedtlError, match="no layer"):
        gradcam(model, torch.rand(1, 32, 32), "layer9")
    with pytest.raises(MedtlError, match="expected one 2D image"):
        gradcam(model, torch.rand(2, 1, 32, 32), "layer3")
    with pytest.raises(MedtlError, match=r"class 5 is not one of the model's 2 outputs \(0..1\)"):
        gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx=5)
    with pytest.raises(MedtlError, match=r"class -1 is not an output index"):  # torch would take the last
        gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx=-1)
    with pytest.raises(MedtlError, match=r"class_idx: .*got 'square'.*label_names"):
        gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx="square")
    assert gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx=np.int64(1)).shape == (32, 32)


def test_the_callers_gradients_are_left_as_they_were():
    """Grad-CAM's backward pass must not add to (or leave) gradients on the caller's model: a notebook may
    explain a model between optimiser steps."""
    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    assert gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx=1) is not None
    assert all(p.grad is None for p in model.parameters())
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    gradcam(model, torch.rand(1, 32, 32), "layer3", class_idx=0)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))


def test_2d_overlay_is_not_transposed():
    """A bright block in the upper-right of a 2D image stays upper-right in the PNG."""
    from PIL import Image

    img = np.zeros((40, 40))
    img[2:12, 28:38] = 1.0  # rows 2-11 (top), columns 28-37 (right)
    cam = np.zeros((40, 40))
    png = np.asarray(Image.open(io.BytesIO(overlay_png(img, cam))).convert("L"), dtype=float)
    h, w = png.shape
    top_right = png[: h // 2, w // 2 :].mean()
    bottom_left = png[h // 2 :, : w // 2].mean()
    assert top_right > bottom_left + 5


def test_a_volume_overlay_draws_the_air_around_the_head_black():
    """A review: the model's volume, z-scored over the head, keeps the air at exactly 0 (the head's mean), and the
    overlay drew it mid-grey, lighter than dark tissue. A viewer shows air black."""
    from medtl.evaluation.explain import _norm

    rng = np.random.default_rng(0)
    vol = np.zeros((24, 24, 24))
    vol[4:20, 4:20, 4:20] = rng.normal(size=(16, 16, 16))  # the head, z-scored: mean 0, dark voxels below it
    grey = _norm(vol[12], zero_is_background=True)
    assert np.all(grey[vol[12] == 0] == 0)  # air: black
    head = grey[vol[12] != 0]
    assert np.median(head) == pytest.approx(0.5, abs=0.1) and head.min() == 0 and head.max() == 1
    assert _norm(vol[12])[0, 0] == pytest.approx(0.5, abs=0.1)  # a 2D image keeps its zeros as values

    from PIL import Image

    png = np.asarray(Image.open(io.BytesIO(overlay_png(vol, np.zeros_like(vol)))).convert("L"), dtype=float)
    h, w = png.shape
    panel = png[h // 4: 3 * h // 4, : int(w * 3.2 / 10.4)]  # the sagittal panel's middle rows
    assert np.percentile(panel, 5) < 10  # black air around the head (it was about 128)


def test_overlay_hot_region_is_coloured():
    """Where the map is 1 the overlay is coloured (jet red), where it is 0 the grey image shows through."""
    from PIL import Image

    img = np.full((40, 40), 0.5)
    img[0, 0] = 0.0  # some contrast, so the grey is mid-grey
    cam = np.zeros((40, 40))
    cam[:, 20:] = 1.0  # right half hot
    rgb = np.asarray(Image.open(io.BytesIO(overlay_png(img, cam))).convert("RGB"), dtype=float)
    h, w, _ = rgb.shape
    w = int(w * 3.2 / 4.0)  # the panel: the colour bar takes the figure's right fifth
    right, left = rgb[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8], rgb[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8]
    assert (right[..., 0] - right[..., 2]).mean() > 50  # red over blue: hot
    assert np.abs(left[..., 0] - left[..., 2]).mean() < 5  # grey: untouched


# ----------------------------------------------------------------------------- deletion test


@pytest.fixture(scope="module")
def blobs():
    """40 images, each with one bright blob at a random place: the model's only evidence for class 1."""
    rng = np.random.default_rng(2)
    return [blob_image(2, 32, corner=int(rng.integers(0, 22)), side=10, rng=rng) for _ in range(40)]


def test_deletion_map_beats_random_and_inverted_map_loses(blobs):
    model = Brightness(2)
    good = deletion_test(model, blobs, "features", class_idx=1, n_boot=500)
    # The blob is ~10% of the image: its top 20% holds all of it. Setting pixels to the image mean
    # leaves the mean (the logit) unchanged on average when they are random, and lowers it when they
    # are the blob.
    assert good["n"] == 40 and good["kind"] == "medtl.gradcam_deletion_test"
    assert good["drop_top"]["mean"] > 0.1
    assert abs(good["drop_random"]["mean"]) < 0.05
    assert good["difference"]["ci"][0] > 0.1 and good["difference"]["ci_t"][0] > 0.1
    assert good["top_larger"] == 1.0
    # Sanity check of the test itself: the inverted map (the bug) blanks the darkest pixels, so the
    # image gets brighter and the probability rises.
    inverted = deletion_test(model, blobs, class_idx=1, n_boot=500,
                             explain=lambda x, c: 1.0 - gradcam(model, x, "features", c))  # fmt: skip
    assert inverted["difference"]["ci"][1] < 0 < good["difference"]["ci"][0]
    assert (good["verdict"], inverted["verdict"]) == ("pass", "fail")
    assert "Verdict: FAIL: the maps do NOT mark what the model uses" in deletion_summary(inverted)
    assert "probability of class 1 by" in deletion_summary(good)
    assert "probability of class 'tumour' by" in deletion_summary(good, ["none", "tumour"])
    # a map of noise neither passes nor fails by much: whatever it gets, it is not "pass" with this margin
    assert deletion_verdict({"ci": [-0.01, 0.02]}) == "inconclusive"
    # A review's 2.5D model: blanking the maps RAISED P (drop -0.018, CI -0.023 to -0.012) while random blanking
    # raised it more (difference 0.005, CI 0.002 to 0.008). Beating the control is not enough to pass.
    raised = {**good, "drop_top": {"mean": -0.018, "ci": [-0.023, -0.012]},
              "difference": {"mean": 0.005, "ci": [0.002, 0.008]}, "verdict": None}
    assert deletion_verdict(raised["difference"], raised["drop_top"]) == "no_drop"
    assert deletion_verdict(good["difference"], good["drop_top"]) == "pass"
    assert "Verdict: NO DROP: not shown that the maps mark what the model uses: blanking them beat blanking random " \
        "pixels, but was not shown to lower the probability" in deletion_summary(raised)
    # a deletion.json written before 'no_drop' existed stores 'pass' for these numbers: the summary goes by them
    assert "Verdict: NO DROP" in deletion_summary({**raised, "verdict": "pass"})
    assert deletion_summary(good).endswith("Only 40 images: 50+ make a number worth reporting.")
    # Independent arithmetic: the reported means are the means of the per-image lists.
    d = np.array(good["per_image"]["drop_top"]) - np.array(good["per_image"]["drop_random"])
    assert good["difference"]["mean"] == pytest.approx(d.mean())
    lo, hi = good["difference"]["ci"]
    assert lo < d.mean() < hi


def test_deletion_shifted_control_and_3d(blobs):
    shifted = deletion_test(Brightness(2), blobs, "features", class_idx=1, control="shifted", n_boot=200)
    assert shifted["difference"]["ci"][0] > 0.1
    rng = np.random.default_rng(3)
    vols = [blob_image(3, 16, corner=int(rng.integers(0, 10)), side=6, rng=rng) for _ in range(12)]
    res = deletion_test(Brightness(3), vols, "features", class_idx=1, n_boot=200)
    assert res["difference"]["ci"][0] > 0.05 and res["per_image"]["class"] == [1] * 12


def test_deletion_predicted_class_dataset_items_and_model_mode(blobs):
    model = Brightness(2)
    model.train()
    res = deletion_test(model, [{"image": b} for b in blobs[:5]], "features", n_boot=50)
    assert res["class_idx"] == "predicted" and res["per_image"]["class"] == [1] * 5  # bright: class 1 predicted
    assert model.training and not model.features._forward_hooks


def test_deletion_bad_input(blobs):
    model = Brightness(2)
    with pytest.raises(MedtlError, match="fraction"):
        deletion_test(model, blobs, "features", fraction=1.0)
    with pytest.raises(MedtlError, match="control"):
        deletion_test(model, blobs, "features", control="blur")
    with pytest.raises(MedtlError, match="fill"):
        deletion_test(model, blobs, "features", fill="zero")
    with pytest.raises(MedtlError, match="n_boot"):
        deletion_test(model, blobs, "features", n_boot=0)
    with pytest.raises(MedtlError, match="at least 2 images"):
        deletion_test(model, blobs[:1], "features")
    with pytest.raises(MedtlError, match="target_layer"):
        deletion_test(model, blobs)
    with pytest.raises(MedtlError, match="class 5"):
        deletion_test(model, blobs, "features", class_idx=5)
    with pytest.raises(MedtlError, match=r"images\[1\]"):
        deletion_test(model, [blobs[0], torch.rand(2, 1, 32, 32)], "features")


def test_deletion_json_round_trip_and_report(tmp_path, blobs, binary_table):
    from medtl.evaluation.report import make_report

    res = deletion_test(Brightness(2), blobs[:10], "features", class_idx=1, n_boot=100)
    path = save_deletion_test(res, tmp_path / "deletion.json")
    assert load_deletion_test(path) == json.loads(json.dumps(res))
    bad = tmp_path / "other.json"
    bad.write_text("{}")
    with pytest.raises(MedtlError, match="not a deletion-test JSON"):
        load_deletion_test(bad)
    png = save_gradcam(Brightness(2), blobs[0], tmp_path / "cam.png", "features", class_idx=1)
    paths = make_report(binary_table, tmp_path / "rep", gradcam=[png, path], n_boot=60, seed=1)
    md = paths["md"].read_text()
    assert deletion_summary(res) in md and "Faithfulness of the maps" in md
    rep = json.loads(paths["json"].read_text())
    assert rep["extras"]["gradcam_faithfulness"][0]["difference"]["mean"] == pytest.approx(res["difference"]["mean"])
    without = make_report(binary_table, tmp_path / "rep2", gradcam=[png], n_boot=60, seed=1)
    assert "No deletion test" in without["md"].read_text()


def test_deletion_refuses_maps_that_are_all_constant(blobs):
    """A 1x1 grid gives every image a constant map: the test would compare random pixels with random pixels."""
    with pytest.raises(MedtlError, match="every map is constant"):
        deletion_test(Brightness(2), blobs[:4], class_idx=1, n_boot=50, explain=lambda x, c: np.zeros(x.shape[2:]))


def test_choose_layer_takes_the_deepest_grid_fine_enough_to_place_evidence():
    """At least 4 cells per axis and 49 in all (Grad-CAM's 7x7 at 224 px): a 4x4 grid placed a small lesion
    3.5x farther from its centre than the 8x8 grid one stage shallower (docs/evaluation.md)."""
    from medtl.evaluation.explain import choose_layer
    from medtl.models import Head, Model, build_encoder

    enc = build_encoder("resnet10", spatial_dims=2, in_channels=1)
    model = Model(enc, Head(enc.out_features, "binary", 2)).eval()
    layers = ["encoder.layer4", "encoder.layer3", "encoder.layer2", "encoder.layer1"]
    assert choose_layer(model, torch.zeros(1, 224, 224), layers) == ("encoder.layer4", (7, 7))
    assert choose_layer(model, torch.zeros(1, 128, 128), layers) == ("encoder.layer3", (8, 8))
    assert choose_layer(model, torch.zeros(1, 64, 64), layers) == ("encoder.layer2", (8, 8))
    assert choose_layer(model, torch.zeros(1, 8, 8), layers)[0] == "encoder.layer1"  # none is fine: the shallowest
    enc3 = build_encoder("resnet10", spatial_dims=3, in_channels=1)
    model3 = Model(enc3, Head(enc3.out_features, "binary", 2)).eval()
    # the default 3D volume: layer4's 3x3x3 is too coarse, layer3's 5x6x5 (150 cells) is not
    assert choose_layer(model3, torch.zeros(1, 80, 96, 80), layers) == ("encoder.layer3", (5, 6, 5))


def test_a_one_cell_grid_gives_a_constant_map_not_scaled_rounding():
    """Upsampling a 1x1 grid leaves float rounding, which min-max scaling once turned into hot specks."""
    from medtl.evaluation.explain import choose_layer
    from medtl.models import Head, Model, build_encoder

    torch.manual_seed(0)
    enc = build_encoder("resnet10", spatial_dims=2, in_channels=1)
    model = Model(enc, Head(enc.out_features, "binary", 2)).eval()
    for seed in range(8):
        x = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(seed))
        assert gradcam(model, x, "encoder.layer4", 1).max() == 0.0  # layer4's grid is 1x1 at 32 px
    with pytest.raises(MedtlError, match="no spatial output"):
        choose_layer(model, torch.zeros(1, 32, 32), ["encoder"])


def test_deletion_intervals_resample_patients_and_near_copies_as_units(blobs):
    """38 test slices of mri2d_yesno are 26 near-copy groups: resampling them singly made the interval too
    narrow. Dataset items' patient_id and near_copy_group now make the units; checked against a numpy cluster
    bootstrap with the same draws, and each image its own unit reproduces the unit-free numbers."""
    model = Brightness(2)
    group_of = [f"g{i // 4}" if i < 20 else "" for i in range(40)]  # 5 groups of 4 copies, then 20 single images
    items = [{"image": b, "patient_id": f"p{i}", "near_copy_group": g} for i, (b, g) in enumerate(zip(blobs, group_of))]
    got = deletion_test(model, items, "features", class_idx=1, n_boot=300, seed=4)
    assert got["n"] == 40 and got["n_units"] == 25 and "25 units of the 40 images" in got["ci_method"]
    assert "40 images (25 independent units" in deletion_summary(got)

    # reference: units drawn with replacement, each bringing its images; the draws as the test makes them
    diff = np.array(got["per_image"]["drop_top"]) - np.array(got["per_image"]["drop_random"])
    # units are numbered by their first image: the 5 groups, then the 20 single images
    own = np.array([i // 4 if i < 20 else i - 15 for i in range(40)])
    rng = np.random.default_rng(5)  # seed + 1; the difference's interval is drawn first, then drop_top's
    rng.integers(0, 25, (300, 25))
    top = np.array(got["per_image"]["drop_top"])
    draws = rng.integers(0, 25, (300, 25))
    sums, counts = np.bincount(own, weights=top), np.bincount(own)
    ref = sums[draws].sum(1) / counts[draws].sum(1)
    assert got["drop_top"]["ci"] == pytest.approx([np.quantile(ref, 0.025), np.quantile(ref, 0.975)])
    # the t interval is of the same mean over images, with a cluster-robust standard error over the 25 units
    # (the ratio estimator's, by hand) and 24 degrees of freedom; it holds the mean it is reported with
    sums, counts = np.bincount(own, weights=diff), np.bincount(own)
    se = np.sqrt(25 / 24 * ((sums - diff.mean() * counts) ** 2).sum()) / 40
    half = stats.t.ppf(0.975, 24) * se
    assert got["difference"]["ci_t"] == pytest.approx([diff.mean() - half, diff.mean() + half])
    assert got["difference"]["ci_t"][0] < got["difference"]["mean"] < got["difference"]["ci_t"][1]

    single = deletion_test(model, items, "features", class_idx=1, n_boot=300, seed=4, groups=None)
    plain = deletion_test(model, blobs, "features", class_idx=1, n_boot=300, seed=4)  # arrays: no ids
    assert single["n_units"] == plain["n_units"] == 40 and single["difference"] == plain["difference"]
    assert plain["ci_method"].startswith("percentile bootstrap over images")
    by_hand = deletion_test(model, items, "features", class_idx=1, n_boot=300, seed=4,
                            groups=[g or f"p{i}" for i, g in enumerate(group_of)])
    assert by_hand["n_units"] == 25
    with pytest.raises(MedtlError, match="one group per image"):
        deletion_test(model, items, "features", class_idx=1, n_boot=10, groups=["a"])
    with pytest.raises(MedtlError, match="groups must be 'auto'"):
        deletion_test(model, items, "features", class_idx=1, n_boot=10, groups="patients")
    # one unit (a multi-frame series, one patient) resampled is the same images every time: refused, not a
    # zero-width interval with a firm verdict
    with pytest.raises(MedtlError, match="the 40 images are one unit .*needs images of at least 2"):
        deletion_test(model, items, "features", class_idx=1, n_boot=10, groups=["one"] * 40)
    # with one image per unit the t interval is the paired t interval of the images, as before units
    t = stats.t.ppf(0.975, 39) * diff.std(ddof=1) / np.sqrt(40)
    assert plain["difference"]["ci_t"] == pytest.approx([plain["difference"]["mean"] - t, plain["difference"]["mean"] + t])
