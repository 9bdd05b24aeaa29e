"""Grad-CAM through MONAI on small random-weight resnet18s, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import resnet18

from medtl.errors import MedtlError
from medtl.evaluation.explain import gradcam, overlay_png, save_gradcam

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions: faster on one thread


@pytest.mark.parametrize("dims, shape", [(2, (1, 64, 64)), (3, (1, 24, 24, 24))])
def test_gradcam_overlay_2d_and_3d(tmp_path, dims, shape):
    torch.manual_seed(0)
    model = resnet18(spatial_dims=dims, n_input_channels=1, num_classes=2)
    image = torch.rand(shape) * 0.1
    image[(0,) + (slice(4, 14),) * dims] += 1.0  # a bright blob to look at
    cam = gradcam(model, image, "layer3", class_idx=1)
    assert cam.shape == shape[1:] and 0.0 <= cam.min() and cam.max() <= 1.0
    assert model.training  # mode restored
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


def test_2d_overlay_is_not_transposed():
    """A bright block in the upper-right of a 2D image stays upper-right in the PNG."""
    import io as _io

    from PIL import Image

    from medtl.evaluation.explain import overlay_png

    img = np.zeros((40, 40))
    img[2:12, 28:38] = 1.0  # rows 2-11 (top), columns 28-37 (right)
    cam = np.zeros((40, 40))
    png = np.asarray(Image.open(_io.BytesIO(overlay_png(img, cam))).convert("L"), dtype=float)
    h, w = png.shape
    top_right = png[: h // 2, w // 2 :].mean()
    bottom_left = png[h // 2 :, : w // 2].mean()
    assert top_right > bottom_left + 5
