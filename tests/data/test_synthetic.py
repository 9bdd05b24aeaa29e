import numpy as np

from medtl.data.io import read
from medtl.data.synthetic import brain_like, cxr_like, write_synthetic_source


def test_generator_is_deterministic_and_balanced(tmp_path):
    a = write_synthetic_source(tmp_path / "a", "cxr", 6, seed=3, size=32)
    b = write_synthetic_source(tmp_path / "b", "cxr", 6, seed=3, size=32)
    assert a.read_text() == b.read_text()
    for line in a.read_text().splitlines()[1:]:
        path = line.split(",")[0]
        np.testing.assert_array_equal(read(tmp_path / "a" / path).array, read(tmp_path / "b" / path).array)
    labels = [line.split(",")[1] for line in a.read_text().splitlines()[1:]]
    assert labels.count("normal") == labels.count("abnormal") == 3


def test_class_signal_and_domain_shift():
    rng = np.random.default_rng(0)
    neg = np.mean([cxr_like(0, 48, rng).mean() for _ in range(20)])
    pos = np.mean([cxr_like(1, 48, rng).mean() for _ in range(20)])
    assert pos > neg + 0.005  # the opacity adds brightness
    vol0 = np.mean([brain_like(0, (16, 16, 16), rng).max() for _ in range(10)])
    vol1 = np.mean([brain_like(1, (16, 16, 16), rng).max() for _ in range(10)])
    assert vol1 > vol0 + 0.1  # the lesion is the brightest thing
    clean = brain_like(0, (48, 48), np.random.default_rng(1), shift=0.0)
    shifted = brain_like(0, (48, 48), np.random.default_rng(1), shift=1.0)
    assert abs(clean.mean() - shifted.mean()) > 0.02


def test_3d_volumes_are_nifti(tmp_path):
    m = write_synthetic_source(tmp_path, "mri3d", 2, seed=0, size=16)
    path = m.read_text().splitlines()[1].split(",")[0]
    assert read(tmp_path / path).array.shape == (16, 16, 16)
