import pytest
import torch
import torch.nn.functional as F

from medtl.errors import MedtlError
from medtl.models import Head, build_head, predict_from_logits, task_loss


def test_binary_head_has_two_logits_and_cross_entropy():
    head = Head(8, "binary")
    assert head.out_features == 2
    f, y = torch.randn(4, 8), torch.tensor([0, 1, 1, 0])
    logits = head(f)
    assert logits.shape == (4, 2)
    assert torch.allclose(head.loss(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(head.predict(logits).sum(1), torch.ones(4))


def test_multiclass_and_regression_heads():
    mc = Head(8, "multiclass", num_classes=4)
    assert mc(torch.randn(3, 8)).shape == (3, 4)
    reg = Head(8, "regression")
    out = reg(torch.randn(3, 8))
    y = torch.tensor([30.0, 40.0, 50.0])
    assert out.shape == (3, 1)
    assert torch.allclose(reg.loss(out, y), F.mse_loss(out.squeeze(1), y))
    assert predict_from_logits(out, "regression").shape == (3,)


def test_head_config_round_trip_and_errors():
    head = Head(16, "multiclass", 3, dropout=0.2)
    again = build_head(head.config)
    assert again.config == head.config and again.fc.weight.shape == (3, 16)
    with pytest.raises(MedtlError, match="unknown task"):
        Head(8, "segmentation")
    with pytest.raises(MedtlError, match="binary head has 2"):
        Head(8, "binary", num_classes=3)
    with pytest.raises(MedtlError, match="integer class"):
        task_loss(torch.randn(2, 2), torch.tensor([0.0, 1.0]), "binary")
