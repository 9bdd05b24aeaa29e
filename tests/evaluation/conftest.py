"""Fixtures for the evaluation tests: small synthetic predictions tables (seeded, fast)."""

from __future__ import annotations

import pytest

from medtl.evaluation.synthetic import synthetic_predictions, synthetic_regression


@pytest.fixture(scope="session")
def binary_table():
    # Two strategies, two seeds, same test cases: enough for seeds, DeLong and figures.
    return synthetic_predictions(80, strategies={"scratch": (0.8, 1.0), "finetune": (1.8, 1.5)}, seeds=(0, 1))


@pytest.fixture(scope="session")
def multiclass_table():
    return synthetic_predictions(60, strategies={"finetune": (2.0, 1.2)}, classes=("glioma", "meningioma", "none"),
                                 task="tumor3")  # fmt: skip


@pytest.fixture(scope="session")
def regression_table():
    return synthetic_regression(80)
