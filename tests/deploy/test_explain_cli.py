"""medtl explain on real chest X-rays, and its files in the next command (medtl evaluate --gradcam)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from medtl.cli import main
from medtl.evaluation.explain import load_deletion_test

pytestmark = pytest.mark.real_data


@pytest.fixture
def xrays(data_root, tmp_path):
    folder = tmp_path / "xrays"
    for label in ("no_finding", "pneumonia"):
        (folder / label).mkdir(parents=True)
        for f in sorted((data_root / "cxr_nih" / "images" / label).glob("*.png"))[:3]:
            shutil.copy(f, folder / label / f.name)
    (folder / "pneumonia" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_explain_writes_overlays_an_index_and_a_deletion_test_that_evaluate_embeds(model_2d, xrays, tmp_path,
                                                                                  capsys):
    out = tmp_path / "cams"
    assert main(["explain", "--model", str(model_2d), "--input", str(xrays), "--out", str(out), "--deletion-test",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    done = [r for r in rows if r["file"]]
    assert len(done) == 6 and all((out / r["file"]).read_bytes().startswith(b"\x89PNG") for r in done)
    assert {r["source"] for r in done} == {f"{p.parent.name}/{p.name}" for p in xrays.rglob("0*.png")}
    (bad,) = [r for r in rows if r["error"]]
    assert bad["source"] == "pneumonia/broken.png" and "broken.png" not in bad["file"]
    assert all(r["file"] in (out / "index.html").read_text() for r in done)
    result = load_deletion_test(out / "deletion.json")
    # 32 px: layer4's grid is 1x1, layer3's 2x2 and layer2's 4x4; layer1's 8x8 is the deepest fine enough
    assert result["n"] == 6 and result["target_layer"] == "encoder.layer1"
    assert "6 overlay(s), 1 error(s) (encoder.layer1)" in printed and "deletion test: Deletion test on 6 images" in printed
    shown = result["verdict"].upper().replace("_", " ")
    assert f"Deletion test: {shown}." in (out / "index.html").read_text()  # the verdict leads
    assert result["verdict"] in ("pass", "fail", "inconclusive", "no_drop") and "Verdict:" in printed
    assert "Only 6 images: 50+ make a number worth reporting." in printed
    assert all(float(r["prob_no_finding"]) + float(r["prob_pneumonia"]) == pytest.approx(1, abs=1e-5) for r in done)

    # the next command: the overlays and the test in a report, beside predict's results scored with labels
    assert main(["predict", "--model", str(model_2d), "--input", str(xrays), "--out", str(tmp_path / "pred"),
                 "--no-progress"]) == 0
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:  # the labels of every readable image, all in the test split
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "domain", "split", "modality"])
        for p in sorted(xrays.rglob("0*.png")):
            rel = f"{p.parent.name}/{p.name}"
            w.writerow([rel, p.parent.name, rel, "xrays", "test", "cxr"])
    assert main(["evaluate", "--predictions", str(tmp_path / "pred" / "results.csv"), "--labels", str(labels),
                 "--out", str(tmp_path / "rep"), "--n-boot", "50", "--gradcam", str(out / done[0]["file"]),
                 str(out / "deletion.json")]) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["extras"]["gradcam"] and report["extras"]["gradcam_faithfulness"][0]["n"] == 6


def test_explain_refuses_an_unknown_class_or_layer_by_name(model_2d, xrays, tmp_path, capsys):
    assert main(["explain", "--model", str(model_2d), "--input", str(xrays), "--out", str(tmp_path / "a"),
                 "--class", "effusion"]) == 2
    assert "'effusion' is not one of the model's classes ['no_finding', 'pneumonia']" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_2d), "--input", str(xrays), "--out", str(tmp_path / "b"),
                 "--layer", "encoder.layer9"]) == 2
    assert "no layer 'encoder.layer9'" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_2d), "--input", str(xrays), "--out", str(tmp_path / "c"),
                 "--class", "pneumonia", "--max-images", "2", "--no-progress"]) == 0
    with open(tmp_path / "c" / "index.csv", newline="") as f:
        done = [r for r in csv.DictReader(f) if r["file"]]
    assert len(done) == 2 and all(r["explained_class"] == "pneumonia" for r in done)  # asked for, whatever was decided
    assert all(r["predicted"] in ("no_finding", "pneumonia") for r in done)
    assert all(float(r["p_explained"]) == pytest.approx(float(r["prob_pneumonia"]), abs=1e-6) for r in done)
    assert main(["explain", "--model", str(model_2d), "--input", str(xrays), "--out", str(tmp_path / "d"),
                 "--layer", "encoder.layer4", "--max-images", "1", "--no-progress"]) == 0
    assert "encoder.layer4 has a 1x1 grid at this input size" in capsys.readouterr().out


def test_the_deletion_test_tests_the_maps_the_overlays_show(xrays, tmp_path, capsys):
    """A binary model decides at its own threshold (here 0.99, so every image is called no_finding although
    pneumonia may have the higher probability): the deletion test explains the same class per image as the
    overlays, and a regression model, which has no class probability, is refused the test."""
    import torch

    from medtl.models import Head, Model, build_encoder, save_checkpoint

    def model(path, task, **meta):
        torch.manual_seed(1)
        enc = build_encoder("resnet10", spatial_dims=2, in_channels=1)
        return save_checkpoint(path, Model(enc, Head(enc.out_features, task, 1 if task == "regression" else 2)),
                               intensity={"preset": "cxr", "image_size": 32, "clahe": False}, image_size=32, **meta)

    strict = model(tmp_path / "strict.pt", "binary", label_names=["no_finding", "pneumonia"], threshold=0.99)
    assert main(["explain", "--model", str(strict), "--input", str(xrays), "--out", str(tmp_path / "s"),
                 "--deletion-test", "--layer", "encoder.layer1", "--no-progress"]) == 0
    with open(tmp_path / "s" / "index.csv", newline="") as f:
        shown = [r["predicted"] for r in csv.DictReader(f) if r["file"]]
    assert set(shown) == {"no_finding"}
    result = load_deletion_test(tmp_path / "s" / "deletion.json")
    assert result["per_image"]["class"] == [0] * len(shown) and result["class_idx"] == "per image"
    age = model(tmp_path / "age.pt", "regression", task_name="age")
    assert main(["explain", "--model", str(age), "--input", str(xrays), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    assert "this model predicts a value: Grad-CAM and its deletion test explain a class" in capsys.readouterr().err


def test_a_manifest_is_explained_on_its_test_split(model_2d, xrays, tmp_path):
    """A manifest medtl train wrote holds its training images too: those are not what a reader should see."""
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "domain", "split", "modality"])
        for i, p in enumerate(sorted(xrays.rglob("0*.png"))):
            rel = f"{p.parent.name}/{p.name}"
            w.writerow([rel, p.parent.name, rel, "xrays", "test" if i < 2 else "train", "cxr"])
    for split, n in (("test", 2), ("all", 6)):
        out = tmp_path / split
        assert main(["explain", "--model", str(model_2d), "--input", str(manifest), "--data-root", str(xrays),
                     "--out", str(out), "--split", split, "--no-progress"]) == 0
        with open(out / "index.csv", newline="") as f:
            assert len([r for r in csv.DictReader(f) if r["file"]]) == n
    assert "Not tested" in (tmp_path / "test" / "index.html").read_text()


def test_the_index_is_written_when_the_deletion_test_is_refused(model_2d, xrays, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["explain", "--model", str(model_2d), "--input", str(xrays), "--out", str(out), "--max-images",
                 "1", "--deletion-test", "--no-progress"]) == 2
    assert "needs at least 2 explained images" in capsys.readouterr().err
    assert (out / "index.csv").exists() and "Deletion test refused" in (out / "index.html").read_text()


def test_a_regression_models_results_go_into_evaluate(xrays, tmp_path, capsys):
    """predict names a regression model's value after its target (predicted_age); its own next step (evaluate
    --labels with the input manifest) scores it against that manifest's age column, not its label column (here
    the class folders), and the MAE is the one computed from the CSV by hand."""
    import shlex

    import numpy as np
    import pandas as pd
    import torch

    from medtl.models import Head, Model, build_encoder, save_checkpoint

    torch.manual_seed(2)
    enc = build_encoder("resnet10", spatial_dims=2, in_channels=1)
    age = save_checkpoint(tmp_path / "age.pt", Model(enc, Head(enc.out_features, "regression", target_mean=50.0,
                                                              target_std=10.0)),
                          intensity={"preset": "cxr", "image_size": 32, "clahe": False}, image_size=32,
                          label_names=None, task_name="age")
    images = sorted(p.relative_to(xrays).as_posix() for p in xrays.rglob("0*.png"))
    manifest = tmp_path / "own.csv"
    pd.DataFrame({"path": images, "label": [p.split("/")[0] for p in images], "patient_id": images,
                  "domain": "xrays", "split": "test", "modality": "cxr",
                  "age": 30.0 + 5 * np.arange(len(images))}).to_csv(manifest, index=False)
    assert main(["predict", "--model", str(age), "--input", str(manifest), "--data-root", str(xrays),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = pd.read_csv(tmp_path / "pred" / "results.csv")
    assert "predicted_age" in results and set(results["label"]) == {"no_finding", "pneumonia"}
    (command,) = [line.strip() for line in printed.splitlines() if line.strip().startswith("medtl evaluate")]
    assert f"--labels {manifest}" in command
    assert main([*shlex.split(command)[1:], "--n-boot", "50"]) == 0
    report = json.loads((tmp_path / "pred" / "report" / "report.json").read_text())
    (entry,) = report["tasks"]["age"]["strategies"].values()
    truth = pd.read_csv(manifest).set_index("path")["age"].loc[results["case_id"]].to_numpy()
    assert entry["metrics"]["mae"]["value"] == pytest.approx(np.abs(results["predicted_age"] - truth).mean(), abs=1e-4)
    # without the manifest, the results' label column (the class folders) is not taken for ages
    assert main(["evaluate", "--predictions", str(tmp_path / "pred" / "results.csv"), "--out",
                 str(tmp_path / "r2")]) == 2
    assert "the model predicts 'age': give the manifest with the true age values" in capsys.readouterr().err


@pytest.mark.parametrize("method, options", [("acs", {}), ("2.5d", {}), ("2.5d", {"aggregate": "attention"})])
def test_a_lifted_pipeline_model_is_explained_on_volumes(method, options, data_root, tmp_path, capsys):
    """A pipeline's best.pt of a 2D encoder lifted to 3D: ACS keeps no Conv3d (explain had refused it) and 2.5D
    runs its 2D encoder on the slices (explain had failed on the input's shape). Both give overlays of the volume
    and a deletion test; with attention pooling the pool, which learns with the last stage, is not a stage."""
    import torch

    from medtl.models import Head, Model, build_encoder, save_checkpoint
    from medtl.models.lift import lift

    torch.manual_seed(0)
    enc = lift(build_encoder("resnet10", spatial_dims=2, in_channels=1), method, **options)
    model = save_checkpoint(tmp_path / "lifted.pt", Model(enc, Head(enc.out_features, "binary", 2)),
                            intensity={"preset": "mri3d", "spacing": [6.0, 6.0, 6.0], "volume_shape": [24, 32, 24]},
                            label_names=["F", "M"], image_size=[24, 32, 24])
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    for f in sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[:3]:
        shutil.copy(f, volumes / f.name)
    out = tmp_path / "cams"
    assert main(["explain", "--model", str(model), "--input", str(volumes), "--out", str(out), "--deletion-test",
                 "--no-progress"]) == 0
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["file"] and not r["error"] for r in rows)
    assert load_deletion_test(out / "deletion.json")["n"] == 3


def test_each_overlay_carries_what_the_deletion_test_said():
    """A PNG copied out of the folder alone must not pass for evidence: its footer says the verdict, or that
    the maps were not tested (the review found a FAILed model's overlay that said nothing)."""
    from medtl.cli.explain import _verdict_line
    from medtl.evaluation.explain import overlay_png

    failed = {"verdict": "fail", "n": 50, "level": 0.95, "difference": {"mean": -0.03, "ci": [-0.05, -0.01]},
              "drop_top": {"mean": 0.02, "ci": [0.01, 0.03]}}
    assert _verdict_line(failed, None) == ("Deletion test of these maps: FAIL on 50 images (drop +0.020, 95% CI 0.010 "
                                           "to 0.030; beyond random blanking -0.030, CI -0.050 to -0.010): do not show "
                                           "this map as evidence.")
    assert _verdict_line({**failed, "verdict": "pass"}, None).endswith("to -0.010).")
    # fewer than 50 images: the line says the number is not one to report; a NO DROP is no evidence either
    few = _verdict_line({**failed, "verdict": "no_drop", "n": 6}, None)
    assert few.startswith("Deletion test of these maps: NO DROP on 6 images") and "do not show this map" in few
    assert few.endswith("Only 6 images: 50+ make a number worth reporting.")
    assert _verdict_line(None, None).startswith("Not tested: nothing shows that this map marks what the model uses")
    assert _verdict_line(None, "needs at least 2 images").startswith("Deletion test refused (needs at least 2 images)")
    import numpy as np

    image, cam = np.zeros((1, 32, 32)), np.linspace(0, 1, 32 * 32).reshape(32, 32)
    assert overlay_png(image, cam, "t", footer=_verdict_line(failed, None)) != overlay_png(image, cam, "t")


def test_a_manifests_patients_and_near_copies_are_the_deletion_tests_units(model_2d, xrays, tmp_path, capsys):
    """The deletion test's interval drew images singly, so a patient's images and near-copies of one scan
    counted as independent evidence; from a manifest they are now resampled together (as medtl evaluate does)."""
    files = sorted(f"{p.parent.name}/{p.name}" for p in xrays.rglob("0*.png"))
    patient = {f: f for f in files}
    patient[files[1]] = files[0]  # one patient, two images
    group = {files[3]: "g1", files[4]: "g1"}  # two per-image "patients" that are one scan
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "domain", "split", "modality", "near_copy_group"])
        w.writerows([x, x.split("/")[0], patient[x], "d", "test", "cxr", group.get(x, "")] for x in files)
    assert main(["explain", "--model", str(model_2d), "--input", str(manifest), "--data-root", str(xrays),
                 "--out", str(tmp_path / "cams"), "--deletion-test", "--no-progress"]) == 0
    result = load_deletion_test(tmp_path / "cams" / "deletion.json")
    assert (result["n"], result["n_units"]) == (6, 4) and "4 units of the 6 images" in result["ci_method"]
    assert "Deletion test on 6 images (4 independent units" in capsys.readouterr().out


def test_a_volume_with_unequal_voxels_is_drawn_to_scale():
    """4x4x8 mm voxels: a 20x20x10 volume is an 80 mm cube, and each panel is drawn square (it was drawn at
    2:1, squashing the head to half its height in the sagittal and coronal panels)."""
    import io

    import numpy as np
    from PIL import Image

    from medtl.evaluation.explain import overlay_png

    image, cam = np.zeros((1, 20, 20, 10)), np.zeros((20, 20, 10))

    def panel_shapes(spacing):
        png = np.asarray(Image.open(io.BytesIO(overlay_png(image, cam, spacing=spacing))).convert("L"))
        from scipy import ndimage

        blobs, _ = ndimage.label(png < 40)  # the black images on the white figure (and the colour bar's foot)
        panels = sorted(ndimage.find_objects(blobs), key=lambda b: -(b[0].stop - b[0].start) * (b[1].stop - b[1].start))
        panels = sorted(panels[:3], key=lambda b: b[1].start)  # the three largest, left to right
        return [(b[0].stop - b[0].start) / (b[1].stop - b[1].start) for b in panels]

    assert panel_shapes((4, 4, 8)) == [pytest.approx(1, abs=0.05)] * 3
    squashed = panel_shapes(None)  # voxels drawn square: 10 rows of 20 columns in the sagittal and coronal panels
    assert squashed[:2] == [pytest.approx(0.5, abs=0.05)] * 2 and squashed[2] == pytest.approx(1, abs=0.05)


def test_a_series_uid_is_kept_whole_as_predict_keeps_it(model_mr2d, mprage_files, new_series, tmp_path):
    """A security review: explain scrubbed a PatientID that equals a component of the series UID out of the UID in
    index.csv ('1.2.826...1125.[redacted].1'), where predict keeps UIDs whole: the two outputs no longer joined."""
    files = new_series(mprage_files[:1], tmp_path / "data" / "study", "uid-kept")
    import pydicom

    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    component = uid.split(".")[-2]  # a PatientID that happens to equal one of the UID's components
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientID = component
        ds.save_as(f)
    out = tmp_path / "cams"
    assert main(["explain", "--model", str(model_mr2d), "--input", str(tmp_path / "data"), "--out", str(out),
                 "--no-progress"]) == 0
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["source"] for r in rows if r["file"]] == [uid]
