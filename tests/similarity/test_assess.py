import json

import numpy as np
import pytest

from medtl.errors import MedtlError
from medtl.similarity.assess import assess, to_json, to_table


def data(seed=0):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(40, 5))
    y = np.arange(30) % 2
    tgt = rng.normal(size=(30, 5)) + 0.5
    tgt[:, 0] += 2 * y
    return src, tgt, y


def test_assess_with_labels_and_leep(tmp_path):
    src, tgt, y = data()
    probs = np.full((30, 3), 1 / 3)
    out = assess(src, tgt, y, source_model_probs=probs, n_permutations=20)
    assert set(out["distances"]) == {"mmd2", "mmd_p_value", "proxy_a_distance", "domain_error", "frechet", "linear_cka"}
    assert out["distances"]["linear_cka"] is None
    assert out["transferability"]["leep"] == pytest.approx(np.log(0.5))  # uninformative source model
    assert out["transferability"]["logme"] is not None and out["n_target_classes"] == 2
    assert json.loads(to_json(out, tmp_path / "a.json")) == json.loads((tmp_path / "a.json").read_text())
    table = to_table(out)
    assert "proxy_a_distance" in table and "logme" in table and "note: linear CKA" in table
    assert "| metric | value |" in to_table(out, markdown=True)


def test_assess_unlabelled_and_paired():
    src, tgt, _ = data(1)
    out = assess(src[:30], tgt, paired=True, n_permutations=10)
    assert out["transferability"] == {"logme": None, "leep": None, "h_score": None}
    assert 0.0 <= out["distances"]["linear_cka"] <= 1.0


def test_paired_features_of_two_widths_get_cka_and_no_distances():
    """Two encoders' features of the same images (the documented CKA case, widths may differ) were refused by the
    width check meant for distances. CKA equals Kornblith et al.'s HSIC form computed here."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 12))
    b = a[:, :4] @ rng.normal(size=(4, 4)) + 0.1 * rng.normal(size=(60, 4))
    out = assess(a, b, np.arange(60) % 2, paired=True, n_permutations=10)
    ac, bc = a - a.mean(0), b - b.mean(0)
    hsic = lambda x, y: np.linalg.norm(y.T @ x) ** 2  # noqa: E731
    assert out["distances"]["linear_cka"] == pytest.approx(hsic(ac, bc) / np.sqrt(hsic(ac, ac) * hsic(bc, bc)))
    assert all(out["distances"][k] is None for k in ("mmd2", "mmd_p_value", "proxy_a_distance", "frechet"))
    assert any("differ in width (12 vs 4)" in n for n in out["notes"]) and out["transferability"]["logme"] is not None
    with pytest.raises(MedtlError, match="width"):  # unpaired, the widths must agree
        assess(a, b)


def test_a_handful_of_rows_is_said_to_be_mostly_noise():
    """A review: 5 images a side gave PAD 2.00 ('separable') and p = 0.015 with no warning."""
    src, tgt, y = data(3)
    few = assess(src[:5], tgt[:5], y[:5], n_permutations=10)
    assert any("only 5 rows on one side (fewer than 20)" in n for n in few["notes"])
    assert not any("rows on one side" in n for n in assess(src, tgt, y, n_permutations=10)["notes"])


def test_assess_bad_input():
    src, tgt, y = data(2)
    with pytest.raises(MedtlError, match="width"):
        assess(src[:, :3], tgt)
    with pytest.raises(MedtlError, match="single class"):
        assess(src, tgt, np.zeros(30, int), n_permutations=5)
    with pytest.raises(MedtlError, match="empty"):
        assess(src[:0], tgt)


def test_assess_h_score_is_bounded_and_drives_the_recommendation(strong_and_weak_features):
    from medtl.similarity.recommend import recommend
    from medtl.similarity.transferability import h_score

    rng, y, strong, weak = strong_and_weak_features
    cands = []
    for name, f in (("strong16", strong), ("weak256", weak)):
        out = assess(rng.normal(size=(60, f.shape[1])), f, y, n_permutations=5)
        h = out["transferability"]["h_score"]
        assert h == pytest.approx(h_score(f, y)) and 0.0 <= h <= 1.0  # two classes: ceiling 1
        cands.append({"source": "s", "encoder": name, "strategy": "finetune", "scores": {"h_score": h}})
    rec = recommend({"n_labelled": 100}, cands, weights={"h_score": 1.0})
    assert rec["recommended"] == "s/strong16/finetune"
