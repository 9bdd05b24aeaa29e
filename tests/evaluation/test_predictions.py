"""The predictions table: round trip, defaults, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtl.errors import MedtlError
from medtl.evaluation.predictions import (
    label_indices,
    load_predictions,
    logit_matrix,
    predictions_from_arrays,
    probabilities,
    task_infos,
    validate_predictions,
    write_predictions,
)


def _table(n=6, **kw):
    rng = np.random.default_rng(0)
    P = rng.dirichlet([1, 1, 1], n)
    return predictions_from_arrays(
        [f"c{i}" for i in range(n)], rng.integers(0, 3, n), P, class_names=["glioma", "meningioma", "none"],
        patient_ids=[f"p{i // 2}" for i in range(n)], split=["val", "test"] * (n // 2), run_id="r1", strategy="ft",
        task="t", seed=3, **kw,
    )  # fmt: skip


def test_csv_round_trip_keeps_ids_labels_and_probabilities(tmp_path):
    df = _table(label_fraction=0.25, site="A")
    df.loc[0, "case_id"] = "007"  # leading zeros survive: ids are text
    path = write_predictions(df, tmp_path / "p.csv")
    back = load_predictions(path)
    assert list(back.columns[:9]) == ["case_id", "patient_id", "domain", "split", "label", "run_id", "strategy",
                                      "task", "seed"]  # fmt: skip
    assert back["case_id"].iloc[0] == "007" and back["site"].iloc[0] == "A"  # extra columns kept
    classes = task_infos(back)["t"].classes
    assert classes == ("glioma", "meningioma", "none")
    np.testing.assert_allclose(probabilities(back, classes), probabilities(df, classes))
    np.testing.assert_array_equal(label_indices(back, classes), label_indices(df, classes))
    assert back["seed"].iloc[0] == 3 and back["label_fraction"].iloc[0] == 0.25


def test_defaults_multi_task_and_regression(tmp_path):
    raw = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "label": ["yes", "no", "40.5", "61"],
                        "prob_no": [0.2, 0.7, None, None], "prob_yes": [0.8, 0.3, None, None],
                        "prediction": [None, None, 42.0, 58.0], "task": ["tumor", "tumor", "age", "age"]})  # fmt: skip
    df = validate_predictions(raw)
    assert set(df["split"]) == {"test"} and set(df["strategy"]) == {"default"}
    info = task_infos(df)
    assert info["tumor"].kind == "binary" and info["tumor"].classes == ("no", "yes")
    assert info["age"].kind == "regression"


def test_numeric_class_names(tmp_path):
    df = predictions_from_arrays(["a", "b"], [0, 1], [[0.9, 0.1], [0.3, 0.7]])
    path = write_predictions(df, tmp_path / "p.csv")
    assert list(load_predictions(path)["label"]) == ["0", "1"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.assign(prob_none=d["prob_none"] + 0.2), "do not sum to 1"),
        (lambda d: d.assign(prob_none=np.where(d.index == 1, np.nan, d["prob_none"])), "NaN scores"),
        (lambda d: d.assign(label=["tumour"] + list(d["label"][1:])), "do not match the model's classes"),
        (lambda d: d.assign(prob_none=d["prob_none"] + 1, prob_glioma=d["prob_glioma"] - 1), r"outside \[0, 1\]"),
        (lambda d: pd.concat([d, d.iloc[:1]]), "more than once"),
        (lambda d: d.drop(columns=["label"]), "missing required column 'label'"),
        (lambda d: d.assign(seed="x"), "non-numbers"),
    ],
)
def test_bad_input_is_a_clear_medtl_error(change, message):
    with pytest.raises(MedtlError, match=message):
        validate_predictions(change(_table()))


def test_load_errors(tmp_path):
    with pytest.raises(MedtlError, match="not found"):
        load_predictions(tmp_path / "missing.csv")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(MedtlError, match="use .csv or .parquet"):
        load_predictions(tmp_path / "p.txt")


def test_parquet_round_trip_or_clear_error(tmp_path):
    df = _table()
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(MedtlError, match="pyarrow"):
            write_predictions(df, tmp_path / "p.parquet")
        return
    back = load_predictions(write_predictions(df, tmp_path / "p.parquet"))
    pd.testing.assert_series_equal(back["prob_none"], df["prob_none"])


def test_runs_with_different_class_names_are_refused():
    a = predictions_from_arrays(["a", "b"], [0, 1], [[0.8, 0.2], [0.3, 0.7]], class_names=["neg", "pos"], run_id="x")
    b = predictions_from_arrays(["a", "b"], [0, 1], [[0.8, 0.2], [0.3, 0.7]], class_names=["normal", "pos"], run_id="y")
    with pytest.raises(MedtlError, match="disagree on the class names"):
        validate_predictions(pd.concat([a, b], ignore_index=True))


def _with_logits(n=6, seed=0):
    rng = np.random.default_rng(seed)
    L = rng.normal(0, 3, size=(n, 3))
    P = np.exp(L) / np.exp(L).sum(axis=1, keepdims=True)
    df = predictions_from_arrays(
        [f"c{i}" for i in range(n)], rng.integers(0, 3, n), P, logits=L, class_names=["glioma", "meningioma", "none"],
        split=["val", "test"] * (n // 2), run_id="r1", strategy="ft", task="t", seed=3,
    )  # fmt: skip
    return L, P, df


def test_logit_columns_round_trip_and_match_the_probabilities(tmp_path):
    L, P, df = _with_logits()
    classes = ["glioma", "meningioma", "none"]
    assert [c for c in df.columns if c.startswith("logit_")] == [f"logit_{c}" for c in classes]
    back = load_predictions(write_predictions(df, tmp_path / "p.csv"))
    np.testing.assert_allclose(logit_matrix(back, classes), L, rtol=1e-12)
    np.testing.assert_allclose(logit_matrix(back, classes[::-1]), L[:, ::-1], rtol=1e-12)  # class order kept
    np.testing.assert_allclose(probabilities(back, classes), P, rtol=1e-12)
    # probs may be left out: they are the softmax of the logits
    only = predictions_from_arrays(["a", "b"], [0, 1], logits=[[1.0, -1.0], [0.0, 30.0]])
    np.testing.assert_allclose(probabilities(only, ["0", "1"])[0], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    assert logit_matrix(_table(), classes) is None  # no logit columns: None (fall back to log p)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.assign(**{c: np.where(d.index == 2, np.nan, d[c]) for c in d if c.startswith("logit_")}),
         "logits for some cases but not for c2"),
        (lambda d: d.assign(logit_none=np.where(d.index == 2, np.nan, d["logit_none"])), "NaN or infinite logits"),
        (lambda d: d.assign(logit_none=np.nan), "NaN or infinite logits for cases c0"),  # a column left empty
        (lambda d: d.assign(logit_none=np.inf), "NaN or infinite logits"),
        (lambda d: d.drop(columns=["logit_none"]), "missing logit_none"),
        (lambda d: d.assign(logit_tumour=0.0), "name no class"),
        (lambda d: d.assign(logit_none=d["logit_none"] + 2.0), "softmax of the logit columns differs"),
        (lambda d: d.rename(columns={"logit_none": "logit_glioma", "logit_glioma": "logit_none"}), "differs"),
        (lambda d: d.assign(logit_none="x"), "non-numbers"),
    ],
)
def test_bad_logit_columns_are_refused(change, message):
    with pytest.raises(MedtlError, match=message):
        validate_predictions(change(_with_logits()[2]))


def test_predictions_from_arrays_checks_logits():
    with pytest.raises(MedtlError, match="logits"):
        predictions_from_arrays(["a", "b"], [0, 1], logits=[[0.0, np.nan], [1.0, 0.0]])
    with pytest.raises(MedtlError, match="logits"):
        predictions_from_arrays(["a", "b"], [0, 1], logits=[0.3, 0.2])  # one logit per case: not (n, K)
    with pytest.raises(MedtlError, match="logits"):
        predictions_from_arrays(["a", "b"], [0, 1], [[0.5, 0.5], [0.5, 0.5]], logits=np.zeros((2, 3)))


def test_float_and_boolean_class_indices_are_indices():
    """Labels as a float or boolean array (what a numpy pipeline often holds, and what the metric functions
    accept) are class indices; a fraction is refused as such, not as a missing probability column."""
    P = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    ints = predictions_from_arrays(["a", "b", "c"], [0, 1, 0], P)
    for labels in (np.array([0.0, 1.0, 0.0]), np.array([False, True, False])):
        assert predictions_from_arrays(["a", "b", "c"], labels, P)["label"].tolist() == ints["label"].tolist()
    with pytest.raises(MedtlError, match=r"class indices 0..1, got 0.5"):
        predictions_from_arrays(["a", "b", "c"], np.array([0.0, 0.5, 1.0]), P)
    with pytest.raises(MedtlError, match="label indices outside 0..1"):
        predictions_from_arrays(["a", "b", "c"], np.array([0.0, 2.0, 1.0]), P)


def test_empty_labels_infinite_regression_values_and_renamed_classes_are_named_as_such(tmp_path):
    """A review: an empty label said 'labels [nan] do not match ... missing column prob_nan'; an infinite
    regression value passed the table and failed later without file or case; two inputs of one run naming the
    classes differently (neg/pos, no/yes) said only 'NaN scores'."""
    df = _table()
    df["label"] = df["label"].astype(object)
    df.loc[2, "label"] = None
    with pytest.raises(MedtlError, match=r"empty labels for cases c2") as err:
        validate_predictions(df, "p.csv")
    assert "p.csv" in str(err.value)
    reg = predictions_from_arrays(["a", "b", "c"], [50.0, 60.0, 70.0], prediction=[51.0, 61.0, 69.0], task="age")
    with pytest.raises(MedtlError, match=r"NaN or infinite predictions for cases b"):
        validate_predictions(reg.assign(prediction=[51.0, np.inf, 69.0]))
    with pytest.raises(MedtlError, match=r"infinite labels for cases c"):
        validate_predictions(reg.assign(label=[50.0, 60.0, np.inf], prediction=[51.0, 61.0, 69.0]))
    one = predictions_from_arrays(["a", "b"], [0, 1], [[0.8, 0.2], [0.3, 0.7]], class_names=["neg", "pos"])
    two = predictions_from_arrays(["c", "d"], [0, 1], [[0.8, 0.2], [0.3, 0.7]], class_names=["no", "yes"])
    with pytest.raises(MedtlError, match="name the classes differently"):
        validate_predictions(pd.concat([one, two], ignore_index=True))
