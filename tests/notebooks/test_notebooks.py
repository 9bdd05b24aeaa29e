"""The notebooks in notebooks/ run top to bottom, as a reader runs them.

Each notebook is executed with nbclient in a fresh kernel on the Python running the tests (not
whatever ``python`` comes first on PATH), with the working directory notebooks/ and the data root from
the ``data_root`` fixture passed as MEDTL_DATA_ROOT. Their scratch folders (``tempfile``) land in the
test's tmp_path, where the executed copy of the notebook is kept too. Notebooks are committed without
outputs; that is checked without running them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_data_tour",
    "02_cross_domain_transfer",
    "03_similarity_and_recommendation",
    "04_explainability",
    "05_batch_results",
]
CELL_TIMEOUT_S = 600  # the slowest cell (02's quick pipeline) takes well under a minute on 2 quiet CPU cores


class ThisPython(KernelSpecManager):
    """Every kernel name resolves to an ipykernel on ``sys.executable``."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python ({sys.executable})",
            language="python",
        )


def test_expected_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; strip them before committing"


@pytest.mark.real_data
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, data_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MEDTL_DATA_ROOT", str(data_root))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel inherits these
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        # On a busy 2-core machine OpenBLAS's spinning threads made the similarity measures of 03
        # (eigendecompositions of 512 x 512 covariances) a hundred times slower than one thread.
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first error
    finally:
        nbformat.write(nb, tmp_path / path.name)
    print(f"{path.name}: {time.perf_counter() - started:.0f} s")
