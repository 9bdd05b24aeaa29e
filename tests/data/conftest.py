"""Fixtures for the data tests: a small folder of images in the ``<label>/<file>`` layout."""

import csv

import numpy as np
import pytest
from PIL import Image

from medtl.data.manifest import REQUIRED_COLUMNS


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


@pytest.fixture
def folder_root(tmp_path):
    """<root>/site/<label>/<file>: 12 distinct images per class, plus one near-copy pair."""
    root = tmp_path / "root"
    for label, offset in (("neg", 0), ("pos", 100)):
        for i in range(12):
            _image(root / "site" / label / f"img{i:02d}.png", offset + i)
    # a near-copy of pos/img00: the same pixels, brightened slightly and saved as JPEG
    arr = np.asarray(Image.open(root / "site/pos/img00.png")).astype(int)
    Image.fromarray(np.clip(arr + 3, 0, 255).astype(np.uint8)).save(root / "site/pos/copy.jpg", quality=98)
    return root


def _write_csv(path, rows, columns=REQUIRED_COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def write_csv():
    """A manifest CSV from row dicts (the required columns unless ``columns`` is given)."""
    return _write_csv
