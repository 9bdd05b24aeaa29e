"""medtl predict's results.csv read as a predictions table (medtl.evaluation.batch_results)."""

import json

import numpy as np
import pandas as pd
import pytest

from medtl.cli import main
from medtl.data.manifest import Manifest, ManifestRow
from medtl.errors import MedtlError
from medtl.evaluation.batch_results import is_batch_results, read_batch_results

COLUMNS = ["case_id", "source", "status", "error", "predicted_label", "probabilities", "prob_no", "prob_yes",
           "threshold", "model_name", "model_version", "label", "split"]


def _results(tmp_path, rows, names=None, name="results.csv"):
    df = pd.DataFrame(rows, columns=COLUMNS)
    if names:
        df = df.rename(columns=names)
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _row(case, source, p_yes, status="ok", label="", split="", thr=0.3):
    ok = status == "ok"
    return [case, source, status, "" if ok else "unreadable DICOM header", ("yes" if p_yes >= thr else "no") if ok else "",
            json.dumps({"no": 1 - p_yes, "yes": p_yes}) if ok else "", 1 - p_yes if ok else "", p_yes if ok else "",
            thr, "medtl-resnet10-mri2d", "abc123", label, split]


def _manifest(tmp_path, rows):
    m = Manifest([ManifestRow(p, lab, f"pat-{p}", "site", split, "mri2d") for p, lab, split in rows], ["no", "yes"])
    return m.save(tmp_path / "labels.csv")


def test_labels_and_splits_come_from_the_manifest_by_source_path_and_suffix(tmp_path):
    path = _results(tmp_path, [
        _row("file-1", "yes/a.jpg", 0.9),        # the manifest's path exactly
        _row("file-2", "no/b.jpg", 0.2),         # matches brain/no/b.jpg by its end
        _row("1.2.3", "series7/0001.dcm", 0.4),  # a DICOM series: the manifest names its folder
        _row("file-4", "other/x.jpg", 0.5),      # in no manifest row
        _row("file-5", "bad.dcm", 0.0, status="error"),
    ])
    labels = _manifest(tmp_path, [("yes/a.jpg", "yes", "test"), ("brain/no/b.jpg", "no", "val"),
                                  ("study/series7", "yes", "test")])
    assert is_batch_results(path)
    res = read_batch_results(path, labels=labels)
    t = res.table.set_index("case_id")
    assert list(t.index) == ["file-1", "file-2", "1.2.3"]
    assert t.loc["file-2", "label"] == "no" and t.loc["file-2", "split"] == "val"
    assert t.loc["1.2.3", "label"] == "yes" and t.loc["1.2.3", "patient_id"] == "pat-study/series7"
    assert (res.n_rows, res.n_skipped, res.threshold) == (5, 1, 0.3)
    assert "1 of 5 rows" in res.notes[0] and "file-5: unreadable DICOM header" in res.notes[0]
    assert "1 of 4 rows are not in the labels manifest labels.csv" in res.notes[1]
    assert "probabilities" not in res.table and set(res.table["run_id"]) == {"medtl-resnet10-mri2d abc123"}


def test_old_column_names_key_and_prediction_are_read(tmp_path):
    path = _results(tmp_path, [_row("a", "a.jpg", 0.9, label="yes"), _row("b", "b.jpg", 0.1, label="no")],
                    names={"case_id": "key", "predicted_label": "prediction"})
    table = read_batch_results(path).table
    assert list(table["case_id"]) == ["a", "b"] and list(table["predicted_label"]) == ["yes", "no"]
    assert "prediction" not in table  # the evaluation reads a 'prediction' column as a regression output


def test_refusals_name_the_file_and_the_reason(tmp_path):
    unlabelled = _results(tmp_path, [_row("a", "a.jpg", 0.9)])
    with pytest.raises(MedtlError, match=r"results.csv: the results have no labels.*--labels"):
        read_batch_results(unlabelled)
    labels = _manifest(tmp_path, [("elsewhere/z.jpg", "yes", "test")])
    with pytest.raises(MedtlError, match=r"no row matches a path of the labels manifest labels.csv"):
        read_batch_results(unlabelled, labels=labels)
    failed = _results(tmp_path, [_row("a", "a.jpg", 0.9, status="error")], name="failed.csv")
    with pytest.raises(MedtlError, match=r"failed.csv: no rows with status ok \(of 1\)"):
        read_batch_results(failed)
    (tmp_path / "plain.csv").write_text("case_id,label,prob_no,prob_yes\na,yes,0.1,0.9\n")
    assert not is_batch_results(tmp_path / "plain.csv")


def test_evaluate_cli_uses_the_models_threshold_without_validation_rows(tmp_path, capsys):
    rows = [_row(f"c{i}", f"{i}.jpg", p, label=lab) for i, (p, lab) in
            enumerate([(0.9, "yes"), (0.35, "yes"), (0.25, "yes"), (0.2, "no"), (0.1, "no"), (0.32, "no")])]
    rows.append(_row("c9", "9.dcm", 0, status="error", label="no"))
    path = _results(tmp_path, rows)
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "rep"), "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "results.csv: 7 rows: 6 test rows scored; no val rows; 1 skipped (status not ok)" in out
    # where the threshold came from, printed: results.csv cannot tell the model's own from predict --threshold
    assert "threshold: no validation rows (split 'val'): the threshold medtl predict applied, 0.3, was used" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    entry = next(iter(report["tasks"]["label"]["strategies"].values()))
    assert entry["threshold"]["rule"] == "model" and entry["threshold"]["value"] == pytest.approx(0.3)
    # at 0.3: yes 0.9, 0.35 called positive, 0.25 missed; no 0.32 a false positive
    assert entry["metrics"]["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert entry["metrics"]["specificity"]["value"] == pytest.approx(2 / 3)
    assert any("status other than ok" in n for n in report["notes"])
    assert report["sources"] == [str(path)]
    # --labels belongs to results.csv; a plain predictions table is refused with it
    (tmp_path / "plain.csv").write_text("case_id,label,prob_no,prob_yes\na,yes,0.1,0.9\nb,no,0.8,0.2\n")
    assert main(["evaluate", "--predictions", str(tmp_path / "plain.csv"), "--labels", str(path),
                 "--out", str(tmp_path / "r2")]) == 2
    assert "--labels is for medtl predict's results.csv" in capsys.readouterr().err


def test_rows_predicted_at_different_thresholds_are_refused_not_evaluated_at_half(tmp_path, capsys):
    # a predict resumed with another --threshold: 0.3 for two rows, 0.5 for one
    rows = [_row("a", "a.jpg", 0.9, label="yes"), _row("b", "b.jpg", 0.1, label="no"),
            _row("c", "c.jpg", 0.4, label="yes", thr=0.5)]
    path = _results(tmp_path, rows)
    with pytest.raises(MedtlError, match=r"results.csv: the rows were predicted at different decision thresholds: "
                                         r"0.3 \(2 rows\), 0.5 \(1 row\); rerun medtl predict into a fresh --out"):
        read_batch_results(path)
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "rep"), "--n-boot", "10"]) == 2
    assert "different decision thresholds" in capsys.readouterr().err
    assert not (tmp_path / "rep" / "report.json").exists()


def _split_rows(rng, n, split, thr):
    """n labelled rows of one split whose scores separate the classes imperfectly."""
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0.001, 0.999).round(6)
    return [_row(f"{split}{i}", f"{split}/{i}.jpg", float(q), label="yes" if t else "no", split=split, thr=thr)
            for i, (t, q) in enumerate(zip(y, p))]


def test_evaluate_says_when_the_val_threshold_differs_from_predicts_and_counts_the_rows(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rows = _split_rows(rng, 40, "train", 0.5) + _split_rows(rng, 30, "val", 0.5) + _split_rows(rng, 25, "test", 0.5)
    path = _results(tmp_path, rows)
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "rep"), "--n-boot", "10"]) == 0
    out = capsys.readouterr().out
    # train rows are not scored: the printed accounting says so, per split
    assert (f"{path}: 95 rows: 25 test rows scored; 30 val rows used for the threshold and calibration only; "
            "40 rows of other splits left out (train 40)") in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    thr = next(iter(report["tasks"]["label"]["strategies"].values()))["threshold"]
    assert thr["rule"] == "youden" and abs(thr["value"] - 0.5) > 0.01
    # both values, and how many test cases the two thresholds call differently (numpy, from the file)
    df = pd.read_csv(path)
    test = df[df["split"] == "test"]["prob_yes"].to_numpy()
    changed = int(((test >= thr["value"]) != (test >= 0.5)).sum())
    assert changed > 0
    said = (f"the threshold chosen on val ({thr['value']:.4g}, youden) differs from the threshold medtl predict "
            f"applied (0.5) for its predicted_label column; the metrics here are at {thr['value']:.4g}, which "
            f"calls {changed} of 25 test cases differently from predicted_label")
    assert thr["note"] == said and f"threshold: {said}" in out
    assert said in (tmp_path / "rep" / "report.md").read_text()

    # predict at the threshold val chooses (to results.csv's 6 decimals): nothing to say
    df["threshold"] = round(thr["value"], 6)
    same = tmp_path / "same.csv"
    df.to_csv(same, index=False)
    assert main(["evaluate", "--predictions", str(same), "--out", str(tmp_path / "rep2"), "--n-boot", "10"]) == 0
    again = json.loads((tmp_path / "rep2" / "report.json").read_text())
    assert next(iter(again["tasks"]["label"]["strategies"].values()))["threshold"]["note"] is None


def test_evaluate_refuses_an_output_folder_it_cannot_make_before_evaluating(tmp_path, capsys, monkeypatch):
    path = _results(tmp_path, [_row("a", "a.jpg", 0.9, label="yes"), _row("b", "b.jpg", 0.1, label="no")])
    (tmp_path / "afile").write_text("")
    import medtl.evaluation.evaluate as ev

    def never(*a, **k):
        raise AssertionError("evaluated before the output folder was checked")

    monkeypatch.setattr(ev, "evaluate_predictions", never)
    for cmd in (["evaluate", "--predictions", str(path)], ["report", str(path)]):
        assert main([*cmd, "--out", str(tmp_path / "afile" / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {tmp_path / 'afile' / 'x'}: cannot create the output folder: Not a directory"


def test_report_reads_predicts_results_like_evaluate(tmp_path, capsys):
    rows = [_row(f"c{i}", f"img/{i}.jpg", p) for i, p in enumerate([0.9, 0.35, 0.25, 0.2, 0.1, 0.32])]
    path = _results(tmp_path, rows)
    # no labels: evaluate's clear refusal, not a "labels [None] ... prob_None" error
    assert main(["report", str(path), "--out", str(tmp_path / "r0")]) == 2
    err = capsys.readouterr().err
    assert "results.csv: the results have no labels" in err and "--labels" in err and "None" not in err
    labels = _manifest(tmp_path, [(f"img/{i}.jpg", lab, "test") for i, lab in
                                  enumerate(["yes", "yes", "yes", "no", "no", "no"])])
    assert main(["report", str(path), "--labels", str(labels), "--out", str(tmp_path / "r1"), "--n-boot", "20"]) == 0
    assert main(["evaluate", "--predictions", str(path), "--labels", str(labels), "--out", str(tmp_path / "r2"),
                 "--n-boot", "20"]) == 0
    a, b = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2"))
    ea, eb = (next(iter(r["tasks"]["label"]["strategies"].values())) for r in (a, b))
    assert ea["threshold"] == eb["threshold"] and ea["threshold"]["rule"] == "model"
    assert ea["metrics"] == eb["metrics"] and ea["metrics"]["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert a["sources"] == [str(path)] and a["notes"][0].startswith(f"{path}: 6 rows: 6 test rows scored")


def test_two_models_of_one_name_are_two_strategies_each_at_its_own_threshold(tmp_path):
    """medtl train names a model after its architecture and preset, so two models' results share a model_name:
    report keeps them apart by version, compares them by DeLong, and scores each at the threshold predict
    applied to it (not both at 0.5)."""
    from medtl.evaluation.batch_results import evaluate_files

    probs = [0.9, 0.35, 0.25, 0.2, 0.1, 0.32]
    a = _results(tmp_path, [_row(f"c{i}", f"img/{i}.jpg", p, thr=0.3) for i, p in enumerate(probs)], name="a.csv")
    rows_b = [_row(f"c{i}", f"img/{i}.jpg", p, thr=0.22) for i, p in enumerate([0.8, 0.5, 0.3, 0.25, 0.1, 0.2])]
    for r in rows_b:
        r[-3] = "def456"  # another model_version: other weights, the same name
    b = _results(tmp_path, rows_b, name="b.csv")
    labels = _manifest(tmp_path, [(f"img/{i}.jpg", lab, "test") for i, lab in
                                  enumerate(["yes", "yes", "yes", "no", "no", "no"])])
    task = evaluate_files([a, b], labels=labels, n_boot=20)["tasks"]["label"]
    assert sorted(task["strategies"]) == ["medtl-resnet10-mri2d abc123", "medtl-resnet10-mri2d def456"]
    thresholds = {k: (e["threshold"]["value"], e["threshold"]["rule"]) for k, e in task["strategies"].items()}
    assert thresholds == {"medtl-resnet10-mri2d abc123": (0.3, "model"), "medtl-resnet10-mri2d def456": (0.22, "model")}
    sens_b = task["strategies"]["medtl-resnet10-mri2d def456"]["metrics"]["sensitivity"]["value"]
    assert sens_b == pytest.approx(1.0)  # 0.8, 0.5, 0.3 >= 0.22; at 0.5 it would be 2/3
    assert len(task["comparisons"]) == 1 and task["comparisons"][0]["test"].startswith("DeLong")


def test_exclude_leaves_the_listed_cases_out_of_every_metric_and_says_so(tmp_path, binary_table):
    """A sensitivity analysis: the same predictions scored without, say, the test images that have a
    near-copy in training; the metrics must equal those of the table without those rows."""
    from medtl.evaluation.batch_results import evaluate_files
    from medtl.evaluation.evaluate import evaluate_predictions

    table = binary_table.copy()
    cases = sorted(table.loc[table["split"] == "test", "case_id"].unique())[:10]
    listed = tmp_path / "spanning.csv"
    pd.DataFrame({"path": cases, "split": "test"}).to_csv(listed, index=False)
    got = evaluate_files([table], exclude=listed, n_boot=50)
    expected = evaluate_predictions(table[~table["case_id"].isin(cases)], n_boot=50)
    for name in ("scratch", "finetune"):
        a = got["tasks"]["tumor"]["strategies"][name]["metrics"]["auroc"]["value"]
        b = expected["tasks"]["tumor"]["strategies"][name]["metrics"]["auroc"]["value"]
        assert a == pytest.approx(b)
    assert any(n.startswith("left out 10 case(s) listed in") for n in got["notes"])
    with pytest.raises(MedtlError, match="needs a case_id or path column"):
        pd.DataFrame({"file": cases}).to_csv(tmp_path / "bad.csv", index=False)
        evaluate_files([table], exclude=tmp_path / "bad.csv", n_boot=50)


def test_exclude_matches_predicts_source_paths_and_refuses_a_list_that_matches_nothing(tmp_path):
    """predict's results.csv names a case by series UID or file hash; the list gives manifest paths."""
    from medtl.evaluation.batch_results import _exclude

    table = pd.DataFrame({"case_id": ["file-a1", "file-b2", "file-c3"], "source": ["neg/1.png", "pos/2.png", "pos/3.png"],
                          "split": "test"})
    listed = tmp_path / "spanning.csv"
    pd.DataFrame({"path": ["site/pos/2.png", "site/neg/9.png"]}).to_csv(listed, index=False)
    (kept,), note = _exclude([table], listed, "test")
    assert kept["case_id"].tolist() == ["file-a1", "file-c3"] and note.startswith("left out 1 case(s)")
    pd.DataFrame({"path": ["other/7.png"]}).to_csv(listed, index=False)
    with pytest.raises(MedtlError, match="no row of the predictions matches"):
        _exclude([table], listed, "test")


def test_a_scrubbed_case_id_joins_its_own_row_even_when_two_paths_share_a_tag():
    """The 4-byte tag of a scrubbed case id can collide (about 1 in 2**32 per pair): the visible part of the id
    must fit the path too, and a tag that still names two paths joins neither (rather than a wrong label)."""
    from medtl.evaluation.batch_results import join_labels
    from medtl.paths import path_tag

    salt = bytes(range(32))
    seen, pair = {}, None
    for i in range(400_000):  # a collision between a site-a and a site-b path (found within ~100k in practice)
        path = f"{'ab'[i % 2]}/Patient{i:06d}_CT.dcm"
        tag = path_tag(path, salt)
        if tag in seen and seen[tag][0] != path[0]:
            pair = (seen[tag], path)
            break
        seen.setdefault(tag, path)
    assert pair is not None
    rows = [ManifestRow(p, lab, f"P{k}", "d", "test", "cxr") for k, (p, lab) in enumerate(zip(pair, ("yes", "no")))]
    manifest = Manifest(rows, ["no", "yes"])
    tag = path_tag(pair[0], salt)
    df = pd.DataFrame({"case_id": [f"{pair[0][0]}/[redacted]_CT.dcm#{tag}"], "source": [""]})
    joined, notes = join_labels(df, manifest, "results.csv", salt=salt)
    assert list(joined["label"]) == ["yes"] and list(joined["patient_id"]) == ["P0"] and not notes
    # the visible part fits both paths: ambiguous, so the row is left out and said
    df = pd.DataFrame({"case_id": [f"[redacted]#{tag}", pair[0]], "source": ["", ""]})
    joined, notes = join_labels(df, manifest, "results.csv", salt=salt)
    assert list(joined["case_id"]) == [pair[0]] and "1 of 2 rows are not in the labels manifest" in notes[0]


def test_a_regression_models_results_are_scored_under_its_target_unstratified(tmp_path, capsys):
    """predict's predicted_age scored with --labels: the task was called 'label' and the method text said the
    bootstrap was stratified by true class, which a regression has none of (3D review). MAE against numpy."""
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 30).round(1)
    pred = ages + rng.normal(0, 5, 30)
    results = pd.DataFrame({"case_id": [f"file-{i}" for i in range(30)], "source": [f"v{i}.nii.gz" for i in range(30)],
                            "status": "ok", "error": "", "predicted_label": "", "predicted_age": pred.round(4),
                            "model_name": "m", "model_version": "1", "label": "", "split": ""})
    results.to_csv(tmp_path / "results.csv", index=False)
    rows = [ManifestRow(f"v{i}.nii.gz", "F", f"p{i}", "ixi", "test" if i < 24 else "val", "mri3d", {"age": str(a)})
            for i, a in enumerate(ages)]
    Manifest(rows, ["F"]).save(tmp_path / "labels.csv")
    assert main(["evaluate", "--predictions", str(tmp_path / "results.csv"), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(tmp_path / "rep"), "--n-boot", "50"]) == 0
    # a regression's val rows give the no-skill constant: there is no threshold or calibration to choose
    assert "6 val rows used for the no-skill constant only" in capsys.readouterr().out
    pred, ages = pred[:24], ages[:24]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    (entry,) = report["tasks"]["age"]["strategies"].values()
    assert entry["metrics"]["mae"]["value"] == pytest.approx(np.abs(pred.round(4) - ages).mean(), abs=1e-6)
    assert "unstratified" in report["settings"]["ci_method"] and "stratified by true class" not in entry["aggregation"]


def test_each_predictions_file_is_read_once_and_still_named_in_errors(tmp_path, binary_table, monkeypatch):
    """Two train runs in folders of one name score the same cases under one strategy and run id: they are
    told apart by folder, from one read of each file; a bad file's error names that file, not a DataFrame."""
    import medtl.evaluation.evaluate as evaluate_module
    import medtl.evaluation.predictions as predictions_module
    from medtl.evaluation.batch_results import evaluate_files

    one = binary_table[(binary_table["strategy"] == "scratch") & (binary_table["seed"] == 0)]
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder / "m").mkdir(parents=True)
        paths.append(tmp_path / folder / "m" / "predictions.csv")
        one.to_csv(paths[-1], index=False)
    reads = []
    real = predictions_module.load_predictions

    def counted(path):
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(predictions_module, "load_predictions", counted)
    monkeypatch.setattr(evaluate_module, "load_predictions", counted)
    report = evaluate_files(paths, n_boot=20)
    assert sorted(reads) == sorted(map(str, paths))  # once each
    assert sorted(report["tasks"]["tumor"]["strategies"]) == ["scratch [a/m]", "scratch [b/m]"]
    assert report["sources"] == [str(p) for p in paths]
    bad = one.drop(columns="label")
    bad.to_csv(paths[1], index=False)
    with pytest.raises(MedtlError, match="missing required column 'label'") as err:
        evaluate_files(paths, n_boot=20)
    assert str(paths[1]) in str(err.value)
    reads.clear()
    one.to_csv(paths[1], index=False)
    with pytest.raises(MedtlError, match="the same predictions file is given more than once") as err:
        evaluate_files([paths[0], paths[0]], n_boot=20)  # one file given twice: refused, naming it, before reading
    assert str(paths[0].resolve()) in str(err.value) and len(reads) == 0
    reads.clear()
    binary_table[binary_table["strategy"] == "finetune"].to_csv(paths[1], index=False)
    assert sorted(evaluate_files(paths, n_boot=20)["tasks"]["tumor"]["strategies"]) == ["finetune", "scratch"]
    assert len(reads) == 2  # no clash: still once each


def test_exclude_that_empties_one_file_leaves_it_out_with_a_note(tmp_path, binary_table):
    """Excluding every case of one file said '<that file>: the predictions table has no rows', as if it were empty."""
    from medtl.evaluation.batch_results import evaluate_files

    a = binary_table[binary_table["strategy"] == "scratch"]
    b = binary_table[binary_table["strategy"] == "finetune"].assign(case_id=lambda t: "other-" + t["case_id"])
    paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
    a.to_csv(paths[0], index=False)
    b.to_csv(paths[1], index=False)
    listed = tmp_path / "listed.csv"
    pd.DataFrame({"case_id": sorted(b["case_id"].unique())}).to_csv(listed, index=False)
    report = evaluate_files(paths, exclude=listed, n_boot=20)
    assert list(report["tasks"]["tumor"]["strategies"]) == ["scratch"]
    assert report["sources"] == [str(p) for p in paths]  # the emptied file was given: it is listed
    assert any(n == f"every row of {paths[1]} is excluded: it adds nothing to this report" for n in report["notes"])
    pd.DataFrame({"case_id": sorted(set(a["case_id"]) | set(b["case_id"]))}).to_csv(listed, index=False)
    with pytest.raises(MedtlError, match="nothing is left to score"):
        evaluate_files(paths, exclude=listed, n_boot=20)
