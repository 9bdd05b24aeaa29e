"""``medtl predict`` and ``medtl export-bundle`` through the command line entry point."""

import csv
import json

import pytest

from medtl.cli import main

pytestmark = pytest.mark.real_data


def test_predict_a_manifest_split_with_sr(model_mr2d, data_root, manifests_dir, tmp_path, capsys, dciodvfy):
    out = tmp_path / "out"
    status = main(["predict", "--model", str(model_mr2d), "--input", str(manifests_dir / "dicom.csv"),
                   "--data-root", str(data_root), "--split", "test", "--out", str(out), "--sr", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "1 ok, 0 error(s)" in printed
    # the manifest labels none of its rows: the next step asks for labels instead of offering it (a review ran the
    # printed evaluate with it as --labels and got an IndexError); given anyway, evaluate says why it cannot score
    assert "--labels LABELS.csv" in printed and "labels none of its rows" in printed
    assert main(["evaluate", "--predictions", str(out / "results.csv"), "--labels", str(manifests_dir / "dicom.csv"),
                 "--out", str(tmp_path / "report")]) == 2
    assert "no predicted row has a label in --labels" in capsys.readouterr().err
    with open(out / "results.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["case_id"] == row["source"] == "dicom/emri_small_multiframe_mr.dcm"
    assert row["label"] == "unlabelled" and row["split"] == "test" and row["status"] == "ok"
    assert dciodvfy(out / row["sr_path"]) == []


def test_export_bundle_then_predict_with_it(model_2d, mprage_files, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--model", str(model_2d), "--out", str(bundle)]) == 0
    folder = tmp_path / "in"
    folder.mkdir()
    for f in mprage_files[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    status = main(["predict", "--model", str(bundle), "--input", str(folder), "--out", str(tmp_path / "out"),
                   "--modality", "MR,CT", "--min-slices", "2", "--threshold", "0.9", "--workers", "1",
                   "--no-progress"])
    assert status == 0
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["n_images"] == "3" and row["threshold"] == "0.9"
    assert row["predicted_label"] == ("pneumonia" if float(row["prob_pneumonia"]) >= 0.9 else "no_finding")


def test_bad_input_is_a_clear_error(model_2d, tmp_path, capsys):
    assert main(["predict", "--model", str(model_2d), "--input", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "input not found: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for a run that could not start
    (tmp_path / "in").mkdir()
    assert main(["predict", "--model", str(model_2d), "--input", str(tmp_path / "in"),
                 "--out", str(tmp_path / "in" / ".")]) == 2
    assert "--out is the input folder" in capsys.readouterr().err


def test_an_input_with_nothing_to_read_fails_so_a_scheduler_sees_it(model_2d, tmp_path, capsys):
    """An empty export folder (a failed mount, an export that never arrived) or a folder of notes only."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("exported 2026-11-30")
    for folder in ("empty", "notes"):
        assert main(["predict", "--model", str(model_2d), "--input", str(tmp_path / folder),
                     "--out", str(tmp_path / f"out-{folder}"), "--no-progress"]) == 1, folder
        assert "error: no input found" in capsys.readouterr().err


def test_a_file_no_decoder_reads_is_one_clear_error_row_without_a_library_traceback(model_2d, tmp_path, capsys):
    """pydicom logs every failed decoder with a traceback before it raises; the row already says why (and what
    would read the file), so the log of a batch run stays one line per bad file."""
    import shutil

    from pydicom.data import get_testdata_file

    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("JPEG-lossy.dcm", download=False), tmp_path / "in" / "x.dcm")  # 12-bit JPEG
    assert main(["predict", "--model", str(model_2d), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "error" and "12-bit JPEG Extended needs pylibjpeg" in row["error"]
    assert "Traceback" not in err and "12-bit JPEG Extended needs pylibjpeg" in err


def test_a_taken_folder_is_refused_before_the_model_loads_and_a_failed_start_leaves_nothing(model_2d, tmp_path,
                                                                                          capsys):
    from medtl.lock import OutputLock

    (tmp_path / "in").mkdir()
    with OutputLock(tmp_path / "taken"):  # another predict holds it: refused before a model is even read
        assert main(["predict", "--model", str(tmp_path / "no-model.pt"), "--input", str(tmp_path / "in"),
                     "--out", str(tmp_path / "taken")]) == 75  # busy, not wrong: a scheduler retries later
        assert "is writing to this output folder" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "no-model.pt"), "--input", str(tmp_path / "in"),
                 "--out", str(tmp_path / "new")]) == 2
    assert "model not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # not an empty folder holding a lock and a salt


def test_every_predict_option_has_a_plain_help_line_with_its_default(capsys):
    from medtl.cli import build_parser

    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    for action in predict._actions:
        if action.dest == "help":
            continue
        assert action.help and ("default" in action.help or "required" in action.help), action.option_strings
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "`" not in text  # no reStructuredText markup in a terminal
    assert "--max-instance-mb" in text and "MiB (default: 128)" in text


def test_a_manifest_is_read_from_its_recorded_root_and_a_run_with_no_prediction_fails(model_2d, data_root, tmp_path,
                                                                                      capsys, caplog):
    """predict reads a manifest's paths under the root its .meta.json records, as train does; when every input
    fails (here: a wrong --data-root) it exits 1, so a scheduler notices, and says the root looks wrong."""
    import logging
    import shutil

    from medtl.data.manifest import Manifest, ManifestRow

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, f in enumerate(sorted((data_root / "cxr_nih" / "images" / "pneumonia").glob("*.png"))[:2]):
        shutil.copy(f, images / f.name)
        rows.append(ManifestRow(f.name, "pneumonia", f"p{i}", "nih", "test", "cxr"))
    manifest = Manifest(rows, ["no_finding", "pneumonia"]).save(tmp_path / "project" / "own.csv", data_root=images)
    assert main(["predict", "--model", str(model_2d), "--input", str(manifest), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert "2 ok, 0 error(s)" in capsys.readouterr().out
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--model", str(model_2d), "--input", str(manifest), "--data-root", str(tmp_path),
                     "--out", str(tmp_path / "b"), "--no-progress"]) == 1
    assert "no input could be predicted: the results hold no prediction, only 2 error row(s)" in capsys.readouterr().err
    # the same command again (a nightly rerun): the rows are already there, and still nothing was predicted
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--model", str(model_2d), "--input", str(manifest), "--data-root", str(tmp_path),
                     "--out", str(tmp_path / "b"), "--no-progress"]) == 1
    assert "2 of 2 files are missing under the data root" in caplog.text and "--data-root" in caplog.text


def test_predict_reads_array_archive_rows_of_a_manifest_as_training_does(model_2d, data_root, manifests_dir, tmp_path):
    """A pipeline on PneumoniaMNIST scores its rows (archive.npz::array/index); medtl predict called every
    one "file not found", so a pipeline's checkpoint could not score its own target manifest."""
    import torch

    from medtl.data import Manifest, build_dataset
    from medtl.models.checkpoint import load_checkpoint

    m = Manifest.load(manifests_dir / "cxr_kermany_pneumoniamnist.csv").select(split="test")
    m.rows = m.rows[:6]
    subset = m.save(tmp_path / "six.csv")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_2d), "--input", str(subset), "--data-root", str(data_root),
                 "--out", str(out), "--no-progress"]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok"] * 6 and [r["case_id"] for r in rows] == [r.path for r in m.rows]
    # the same probabilities as the model on the training chain's reading of those rows
    module, _ = load_checkpoint(model_2d)
    ds = build_dataset(m, data_root, "cxr", image_size=32, clahe=False)
    with torch.no_grad():
        expected = torch.softmax(module(torch.stack([ds[i]["image"] for i in range(6)]).float()), 1)[:, 1]
    assert [float(r["prob_pneumonia"]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-5)
    missing = tmp_path / "missing.csv"
    missing.write_text(subset.read_text().replace("pneumoniamnist_28px.npz", "absent.npz"))
    assert main(["predict", "--model", str(model_2d), "--input", str(missing), "--data-root", str(data_root),
                 "--out", str(tmp_path / "pred2"), "--no-progress"]) != 0


def test_the_commands_train_prints_for_a_folder_of_dicom_files_run_and_score_its_test_images(mprage_files, data_root,
                                                                                             tmp_path, capsys):
    """A review: for a class folder of DICOM files, `medtl train` printed `medtl predict --input FOLDER`, whose rows
    are named by series UID, and the printed evaluate then found no row matching the manifest's paths."""
    import shlex

    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.uid import generate_uid

    from medtl.data.manifest import Manifest

    folder = tmp_path / "dicom_classes"
    rows = Manifest.load("data_manifests/mri2d_yesno.csv").rows
    for label in ("no_tumor", "tumor"):  # real brain slices as MR DICOM files, each its own series
        (folder / label).mkdir(parents=True)
        for i, r in enumerate([r for r in rows if r.label == label][:10]):
            ds = pydicom.dcmread(mprage_files[0])
            pixels = np.asarray(Image.open(data_root / r.path).convert("L").resize((ds.Columns, ds.Rows)))
            ds.PixelData = (pixels.astype(np.uint16) * 4).tobytes()
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[label, str(i), "series"])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[label, str(i)])
            ds.save_as(folder / label / f"{label}{i}.dcm")
    out = tmp_path / "run"
    assert main(["train", "--train", str(folder), "--out", str(out), "--image-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--arch", "resnet10", "--n-boot", "50", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    predict, evaluate = [line.strip() for line in printed.splitlines()
                         if line.strip().startswith(("medtl predict", "medtl evaluate"))][:2]
    assert f"--input {out / 'manifest.csv'} --data-root {folder}" in predict
    assert main([*shlex.split(predict)[1:], "--no-progress"]) == 0
    assert main(shlex.split(evaluate)[1:]) == 0
    train_report = json.loads((out / "report.json").read_text())
    again = json.loads((out / "predict" / "report" / "report.json").read_text())

    def auroc(report):
        strategy = next(iter(next(iter(report["tasks"].values()))["strategies"].values()))
        return strategy["metrics"]["auroc"]["value"]

    assert auroc(again) == pytest.approx(auroc(train_report), abs=1e-6)  # the same test images, the same score
    # predict given the training folder itself reads its DICOM as series: it points at the manifest route instead
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model.pt"), "--input", str(folder), "--out", str(tmp_path / "f"),
                 "--no-progress"]) == 0
    hint = capsys.readouterr().out
    assert "read as DICOM series" in hint and f"--input {out / 'manifest.csv'} --data-root {folder}" in hint
    assert "medtl evaluate" not in hint
