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


def test_regression_head_learns_the_standardised_target_and_answers_in_original_units():
    torch.manual_seed(0)
    reg = Head(8, "regression", target_mean=50.0, target_std=15.0)
    f, y = torch.randn(5, 8), torch.tensor([20.0, 35.0, 50.0, 65.0, 80.0])
    raw = reg.fc(f)
    out = reg(f)
    assert torch.allclose(out, raw * 15.0 + 50.0)  # original units: years, not standard deviations
    # the loss is the MSE of standardised values, i.e. the plain MSE divided by std^2
    assert torch.allclose(reg.loss(out, y), F.mse_loss(out.squeeze(1), y) / 15.0**2, rtol=1e-5)
    assert torch.allclose(reg.loss(out, y), F.mse_loss(raw.squeeze(1), (y - 50.0) / 15.0), rtol=1e-5)
    # a zeroed layer predicts the training mean (where a fresh unstandardised head predicts 0 years)
    torch.nn.init.zeros_(reg.fc.weight), torch.nn.init.zeros_(reg.fc.bias)
    assert torch.allclose(reg(f), torch.full((5, 1), 50.0))
    rebuilt = build_head(reg.config)
    assert (rebuilt.target_mean, rebuilt.target_std) == (50.0, 15.0)
    with pytest.raises(MedtlError, match="target_std"):
        Head(8, "regression", target_std=0.0)
    with pytest.raises(MedtlError, match="regression heads only"):
        Head(8, "binary", target_mean=3.0)


def test_standardised_regression_beats_the_training_mean_where_raw_years_do_not_converge():
    """The reviewer's failure: a head regressing raw years from a fresh start, a few hundred SGD steps."""
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = 50.0 + 15.0 * (x[:, 0] * 0.8 + 0.2 * torch.randn(200))
    baseline = float((y - y.mean()).abs().mean())

    def train(head):
        opt = torch.optim.SGD(head.parameters(), lr=0.01)
        for _ in range(200):
            opt.zero_grad()
            head.loss(head(x), y).backward()
            opt.step()
        with torch.no_grad():
            return float((head(x).squeeze(1) - y).abs().mean())

    torch.manual_seed(1)
    standardised = train(Head(8, "regression", target_mean=float(y.mean()), target_std=float(y.std())))
    assert standardised < 0.5 * baseline
