"""Shared test fixtures: the real-data root, a guard that real-data tests never skip silently, and a
tiny synthetic pipeline (``tiny`` data folder, ``make_config`` for its YAML) for the pipeline and CLI tests.

Tests that need ``../shared/data`` take the ``data_root`` fixture. It skips only when the folder is
absent; when MEDTL_REQUIRE_DATA=1 (set by .ci/run) a missing root is an error instead of a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medtl.data.build import build_manifest
from medtl.data.synthetic import write_synthetic_source
from medtl.paths import default_data_root


def _data_root() -> Path:
    root = default_data_root()
    if not root.is_absolute():
        root = (Path(__file__).resolve().parents[1] / root).resolve()
    return root


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for a test: tiny convolutions run faster so on shared cores, and one-process
    references then match torchrun workers (which set OMP_NUM_THREADS=1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "README.md").exists():
        if os.environ.get("MEDTL_REQUIRE_DATA") == "1":
            pytest.fail(f"MEDTL_REQUIRE_DATA=1 but the data root {root} is missing")
        pytest.skip(f"real data not found at {root} (set MEDTL_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data_manifests"


TINY_PIPELINE = """\
name: tiny
seeds: [0]
source: {manifest: manifests/src.csv, image_size: 32}
pretrain: {epochs: 1, batch_size: 8}
target: {manifest: manifests/tgt.csv, image_size: 32}
tasks: [{name: tumor}]
encoder: {arch: resnet10}
train: {epochs: EPOCHS, batch_size: 8, patience: null, device: cpu}
strategies: [feature_extraction, full, dann]
label_fractions: [0.5, 1.0]
similarity: {max_images: 20}
evaluation: {bootstrap: 50}
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A folder with a tiny synthetic source (chest-X-ray-like) and target (brain-MRI-like), 30 images each."""
    root = tmp_path_factory.mktemp("pipe")
    data = root / "data"
    for name, kind, seed in (("src", "cxr", 0), ("tgt", "mri2d", 1)):
        raw = write_synthetic_source(data / name, kind, 30, seed=seed, shift=0.5 * seed, size=32)
        build_manifest(raw, data, seed=0, group_near_copies=False).save(root / "manifests" / f"{name}.csv")
    return root


def _config(tiny, epochs=1, name="p.yaml"):
    """Write the tiny pipeline's YAML into ``tiny`` (its paths are relative to that folder)."""
    path = tiny / name
    path.write_text(TINY_PIPELINE.replace("EPOCHS", str(epochs)))
    return path


_config.config = TINY_PIPELINE  # the raw text, EPOCHS not yet replaced


@pytest.fixture(scope="session")
def make_config():
    return _config


@pytest.fixture
def tiny_run(tiny):
    """The tiny pipeline's finished run folder (``tiny/run``), made by the first test that needs it; tests
    that change a run work on a copy."""
    out = tiny / "run"
    if not (out / "report.json").exists():
        from medtl.pipeline import run_pipeline

        run_pipeline(_config(tiny), tiny / "data", out)
    return out


def pytest_sessionfinish(session, exitstatus):
    """Under CI (MEDTL_REQUIRE_DATA=1 or MEDTL_REQUIRE_SERVICES=1) any skip is a failure: the data and
    services are there, so a skipped real-data or service test means something silently did not run."""
    if os.environ.get("MEDTL_REQUIRE_DATA") != "1" and os.environ.get("MEDTL_REQUIRE_SERVICES") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"FAILED: {len(skipped)} test(s) skipped while CI requires every test to run:", red=True)
        for rep in skipped[:20]:
            reporter.write_line(f"  {rep.nodeid}: {rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else rep.longrepr}")
        session.exitstatus = 1
