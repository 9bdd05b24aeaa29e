"""Shared features for the transferability tests."""

import numpy as np
import pytest


@pytest.fixture
def strong_and_weak_features():
    """Two encoders' features of the same 100 cases (2 classes): a strong narrow one (16-d, 4 informative
    dimensions) and a weak wide one (256-d, 20 faintly informative). Returns (rng, labels, strong, weak);
    the rng goes on from where the features left it."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    strong = rng.normal(size=(100, 16))
    strong[:, :4] += 1.5 * y[:, None]
    weak = rng.normal(size=(100, 256))
    weak[:, :20] += 0.4 * y[:, None]
    return rng, y, strong, weak
