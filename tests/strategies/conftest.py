import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    # Every test draws the same random inputs and weights: results never depend on test order.
    torch.manual_seed(0)
