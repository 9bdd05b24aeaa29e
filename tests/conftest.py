"""Shared test fixtures: the real-data root, and a guard that real-data tests never skip silently.

Tests that need ``../shared/data`` take the ``data_root`` fixture. It skips only when the folder is
absent; when MEDTL_REQUIRE_DATA=1 (set by .ci/run) a missing root is an error instead of a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
