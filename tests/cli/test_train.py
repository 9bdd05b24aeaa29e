"""medtl train on a folder of real images, then the commands it prints: predict -> evaluate.

Tiny on purpose (24 images, 32 px, one epoch): what is tested is the chain of files, not accuracy.
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from medtl.cli import main
from medtl.data.manifest import Manifest

FAST = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--arch", "resnet10", "--n-boot", "50",
        "--no-progress"]


def _copy(src, dst, labels, start, n):
    for label in labels:
        (dst / label).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / label).iterdir())[start:start + n]:
            shutil.copy(f, dst / label / f.name)
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("own")
    folder = _copy(data_root / "mri2d_yesno" / "images", tmp / "brain", ("no_tumor", "tumor"), 0, 12)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        with redirect_stdout(buf):
            code = main(["train", "--train", str(folder), "--out", str(tmp / "run"), *FAST])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return tmp, folder, buf.getvalue()


def test_train_writes_a_deployable_model_a_report_and_the_next_commands(trained):
    tmp, folder, out = trained
    run = tmp / "run"
    for name in ("model.pt", "manifest.csv", "manifest.meta.json", "predictions.csv", "report.html", "report.json"):
        assert (run / name).exists(), name
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    assert meta["task"] == "binary" and meta["task_name"] == "label"
    assert meta["label_names"] == ["no_tumor", "tumor"]
    assert meta["intensity"]["preset"] == "mri2d" and meta["intensity"]["image_size"] == 32
    assert meta["precision"] == "auto"
    report = json.loads((run / "report.json").read_text())
    entry = report["tasks"]["label"]["strategies"]["medtl-resnet10-mri2d-run"]
    # the threshold in the model is the one the report applied: chosen on val by the same rule
    assert entry["threshold"]["rule"] == "youden" and entry["threshold"]["chosen_on"] == "val"
    assert meta["threshold"] == pytest.approx(entry["threshold"]["value"])
    assert entry["metrics"]["auroc"]["ci_low"] is not None
    m = Manifest.load(run / "manifest.csv")
    assert m.recorded_root == folder.resolve() and len(m) == 24
    assert entry["n_test"] == len(m.select(split="test"))
    assert f"label / medtl-resnet10-mri2d-run: test n={entry['n_test']}" in out and "auroc" in out
    assert "(positive class tumor)" in out and f"test n={entry['n_test']}, positive class tumor," in out
    assert f"medtl predict --model {run / 'model.pt'} --input {folder}" in out


def test_the_printed_predict_and_evaluate_commands_score_the_same_test_images(trained, capsys):
    tmp, folder, out = trained
    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("medtl ")]
    assert [c.split()[1] for c in commands] == ["predict", "evaluate"]
    # a file the model cannot read, added after training: predict gives it an error row, evaluate skips it
    (folder / "tumor" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    try:
        assert main([*shlex.split(commands[0])[1:], "--no-progress"]) == 0
        results = tmp / "run" / "predict" / "results.csv"
        header = results.read_text().splitlines()[0].split(",")
        assert "case_id" in header and "predicted_label" in header  # the predictions table's names
        # predict's own next step, given the training folder, scores it through the model's manifest (its split)
        assert f"--labels {tmp / 'run' / 'manifest.csv'}" in capsys.readouterr().out
        assert main([*shlex.split(commands[1])[1:], "--n-boot", "50"]) == 0
    finally:
        (folder / "tumor" / "broken.jpg").unlink()
    printed = capsys.readouterr().out
    assert ("25 rows: 4 test rows scored; 4 val rows used for the threshold and calibration only; 16 rows of other "
            "splits left out (train 16); 1 skipped (status not ok)") in printed
    ours = json.loads((tmp / "run" / "report.json").read_text())["tasks"]["label"]["strategies"]["medtl-resnet10-mri2d-run"]
    theirs = json.loads((tmp / "run" / "predict" / "report" / "report.json").read_text())["tasks"]["label"]
    (theirs,) = theirs["strategies"].values()
    # the manifest's splits came along: the same test images, the same threshold rule, the same numbers
    assert theirs["n_test"] == ours["n_test"]
    assert theirs["threshold"]["value"] == pytest.approx(ours["threshold"]["value"], abs=1e-5)
    for k in ("auroc", "sensitivity", "specificity"):
        assert theirs["metrics"][k]["value"] == pytest.approx(ours["metrics"][k]["value"], abs=1e-6), k


def test_results_of_a_labelled_manifest_are_scored_at_the_models_threshold(trained, capsys):
    tmp, folder, _ = trained
    run = tmp / "run"
    # predict from the manifest's test rows: results.csv carries label and split; no val rows, so the
    # evaluation applies the threshold stored in the model and reproduces medtl train's test numbers
    assert main(["predict", "--model", str(run / "model.pt"), "--input", str(run / "manifest.csv"), "--data-root",
                 str(folder), "--split", "test", "--out", str(tmp / "p_test"), "--no-progress"]) == 0
    # its next step gives the manifest again: its patients and near-copy groups are the bootstrap's units
    (command,) = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("medtl ")]
    assert f"--labels {run / 'manifest.csv'}" in command
    assert main([*shlex.split(command)[1:], "--n-boot", "50"]) == 0
    assert main(["evaluate", "--predictions", str(tmp / "p_test" / "results.csv"), "--out", str(tmp / "p_test" / "rep"),
                 "--n-boot", "50"]) == 0
    capsys.readouterr()
    ours = json.loads((run / "report.json").read_text())["tasks"]["label"]["strategies"]["medtl-resnet10-mri2d-run"]
    (theirs,) = json.loads((tmp / "p_test" / "rep" / "report.json").read_text())["tasks"]["label"]["strategies"].values()
    assert theirs["threshold"]["rule"] == "model"
    assert theirs["threshold"]["value"] == pytest.approx(ours["threshold"]["value"])
    for k in ("auroc", "sensitivity", "specificity"):
        assert theirs["metrics"][k]["value"] == pytest.approx(ours["metrics"][k]["value"], abs=1e-6), k
    # and the model is deployable as a MONAI bundle
    assert main(["export-bundle", "--model", str(run / "model.pt"), "--out", str(tmp / "bundle")]) == 0
    assert (tmp / "bundle" / "configs" / "metadata.json").exists()


def test_train_from_a_checkpoint_with_a_test_folder_under_its_own_root(trained, data_root, one_torch_thread, capsys,
                                                                       caplog):
    tmp, folder, _ = trained
    other = _copy(data_root / "mri2d_yesno" / "images", tmp / "site_b", ("no_tumor", "tumor"), 40, 3)
    out = tmp / "from_init"
    # the manifest written by the first run finds its images through the root it records
    with caplog.at_level("WARNING", logger="medtl.pipeline.train"):
        assert main(["train", "--train", str(tmp / "run" / "manifest.csv"), "--test", str(other),
                     "--init", str(tmp / "run" / "model.pt"), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"test manifest: {out / 'test_manifest.csv'} (root {other.resolve()})" in printed
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert meta["init_weights"] == str(tmp / "run" / "model.pt")
    assert meta["hparams"]["lr"] == 1e-4  # the gentler default when starting from trained weights
    assert meta["intensity"]["image_size"] == 32
    ours = json.loads((out / "report.json").read_text())["tasks"]["label"]["strategies"]["medtl-resnet10-mri2d-from_init"]
    # the whole separate test set, less the one image that is a near-copy of a training image (mri2d_yesno holds
    # such pairs): scored, it would make the test optimistic
    assert ours["n_test"] == 5 and "1 of 6 test images are identical to or near-copies of training images" in caplog.text
    # the printed commands predict that test folder and score it at the model's threshold: the same numbers
    commands = [line.strip() for line in printed.splitlines() if line.strip().startswith("medtl ")]
    assert f"--input {other}" in commands[0] and f"--labels {out / 'test_manifest.csv'}" in commands[1]
    assert main([*shlex.split(commands[0])[1:], "--no-progress"]) == 0
    assert main([*shlex.split(commands[1])[1:], "--n-boot", "50"]) == 0
    capsys.readouterr()
    (theirs,) = json.loads((out / "predict" / "report" / "report.json").read_text())["tasks"]["label"][
        "strategies"].values()
    assert theirs["n_test"] == 5 and theirs["threshold"]["rule"] == "model"  # the test manifest's rows
    for k in ("auroc", "sensitivity", "specificity"):
        assert theirs["metrics"][k]["value"] == pytest.approx(ours["metrics"][k]["value"], abs=1e-6), k


def test_train_scores_near_copies_as_one_unit_as_evaluate_does(data_root, tmp_path, one_torch_thread, capsys):
    """train's predictions.csv carries the manifest's near-copy groups, so its report resamples a group as one
    unit, as medtl evaluate --labels manifest.csv does with predict's results (they had given two intervals)."""
    folder = _copy(data_root / "mri2d_yesno" / "images", tmp_path / "brain", ("no_tumor", "tumor"), 60, 8)
    for f in sorted(folder.rglob("*.*")):
        shutil.copy(f, f.with_name("copy_" + f.name))  # every image twice: groups in every split
    assert main(["train", "--train", str(folder), "--out", str(tmp_path / "run"), *FAST]) == 0
    capsys.readouterr()
    import pandas as pd

    preds = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype=str)
    manifest = {r.path: r.extras.get("near_copy_group") for r in Manifest.load(tmp_path / "run" / "manifest.csv")}
    assert preds["near_copy_group"].tolist() == [manifest[c] for c in preds["case_id"]]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (run,) = report["tasks"]["label"]["strategies"]["medtl-resnet10-mri2d-run"]["runs"]
    assert run["bootstrap"]["near_copy_groups"] and run["n_test_patients"] < run["n_test"]


def test_bad_input_is_refused_before_training_naming_the_file(trained, data_root, tmp_path, capsys):
    tmp, folder, _ = trained
    m = Manifest.load(tmp / "run" / "manifest.csv")
    m.save(tmp_path / "mine.csv", data_root=tmp_path)  # the wrong root recorded
    assert main(["train", "--train", str(tmp_path / "mine.csv"), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"mine.csv (root {tmp_path.resolve()}): " in err and "file not found" in err
    assert not (tmp_path / "o" / "last.pt").exists()  # nothing trained
    assert main(["train", "--train", str(tmp_path / "typo.csv"), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert f"{tmp_path / 'typo.csv'}: not found: no such manifest or folder" in capsys.readouterr().err
    wrong = _copy(folder, tmp_path / "wrong", ("tumor",), 0, 2)
    (wrong / "glioma").mkdir()
    shutil.copy(next((wrong / "tumor").iterdir()), wrong / "glioma" / "x.jpg")
    assert main(["train", "--train", str(tmp / "run" / "manifest.csv"), "--test", str(wrong),
                 "--out", str(tmp_path / "o2"), *FAST]) == 2
    assert f"{wrong}: test labels ['glioma'] are not among the training labels ['no_tumor', 'tumor']" in \
        capsys.readouterr().err
    # a rerun into a finished run's folder resumes it only when the data and settings are the same
    assert main(["train", "--train", str(folder), "--out", str(tmp / "run"), *FAST, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "this folder holds a run with other seed (0 there, 1 now), train (" in err and "use a new folder (--out" in err
    assert Manifest.load(tmp / "run" / "manifest.csv").content_hash() == m.content_hash()  # left as it was
    # a typo in --image-size named an image file and a failed allocation of 40 GB (a review)
    huge = [a if a != "32" else "100000" for a in FAST]
    assert main(["train", "--train", str(folder), "--out", str(tmp_path / "o3"), *huge]) == 2
    assert "--image-size: 100000 px: each side must be 1 to 2048" in capsys.readouterr().err
    # volumes beside 2D images: --modality cannot help (a review followed that advice into a second error)
    mixed = _copy(folder, tmp_path / "mixed", ("no_tumor", "tumor"), 0, 3)
    volume = Manifest.load("data_manifests/mri3d_ixi.csv").rows[0].path
    shutil.copy(data_root / volume, mixed / "tumor" / "v.nii.gz")
    assert main(["train", "--train", str(mixed), "--out", str(tmp_path / "o4"), *FAST]) == 2
    assert "the inputs mix 3D volumes and 2D images" in capsys.readouterr().err


def test_help_is_plain_text_and_gives_every_default():
    import argparse

    from medtl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["train"]
    assert "`" not in parser.format_help()
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert "default" in action.help or "required" in action.help, action.option_strings


def test_modality_is_the_preset_for_every_input_and_a_mix_names_each_input(trained, tmp_path, capsys, caplog):
    """A test manifest that recorded another modality (the builder guessed it) mixes presets; the error names
    each input with its modality and the fix, and --modality prepares every input with the one preset."""
    from dataclasses import replace

    from medtl.pipeline.train import gather_inputs

    tmp, folder, _ = trained
    held = _copy(folder, tmp_path / "held", ("no_tumor", "tumor"), 0, 2)
    m = Manifest.load(tmp / "run" / "manifest.csv")
    other = Manifest([replace(r, modality="cxr") for r in m.rows], m.label_names, m.meta)
    other.save(tmp_path / "held.csv", data_root=folder)
    with pytest.raises(Exception, match=r"mix modalities: .*brain \(mri2d\); .*held.csv \(cxr\)\. Give --modality"):
        gather_inputs(folder, tmp_path / "o1", test=tmp_path / "held.csv", progress=False)
    inputs = gather_inputs(folder, tmp_path / "o2", test=tmp_path / "held.csv", modality="mri2d", progress=False)
    assert inputs.modality == "mri2d" and {r.modality for r in inputs.splits["test"]} == {"mri2d"}
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="medtl.pipeline.train"):
        gather_inputs(held, tmp_path / "o3", progress=False)  # a folder: its near-copy scan shows no bar either
    assert "near-copy scan" not in capsys.readouterr().err
    # a folder has no patient ids: the user is told before training that the splits may share patients
    assert "no patient ids, so each image counts as its own patient" in caplog.text and "val and test" in caplog.text


def test_a_2d_checkpoint_trains_on_volumes_through_a_lift_and_the_model_predicts(trained, data_root, tmp_path,
                                                                                one_torch_thread, capsys):
    """The scenario in one command: a 2D encoder's weights (here the brain-slice model above) lifted to read brain
    MRI volumes; the 3D model it writes is what medtl predict then loads."""
    tmp, _, _ = trained
    rows = Manifest.load("data_manifests/mri3d_ixi.csv").rows
    volumes = tmp_path / "volumes"
    for sex in ("F", "M"):
        (volumes / sex).mkdir(parents=True)
        for r in [r for r in rows if r.label == sex][:6]:
            shutil.copy(data_root / r.path, volumes / sex / (r.path.rsplit("/", 1)[-1]))
    common = ["--train", str(volumes), "--init", str(tmp / "run" / "model.pt"), "--image-size", "16", "16", "16",
              "--epochs", "1", "--batch-size", "4", "--n-boot", "50", "--no-progress"]
    assert main(["train", *common, "--out", str(tmp_path / "refused")]) == 2
    assert "give --lift i3d, acs or 2.5d to lift it to 3D" in capsys.readouterr().err
    assert main(["train", *common, "--lift", "2.5d", "--out", str(tmp_path / "run3d")]) == 0
    printed = capsys.readouterr().out
    meta = torch.load(tmp_path / "run3d" / "model.pt", weights_only=True)["meta"]
    lifted = meta["model"]["encoder"]["lift"]
    assert lifted["method"] == "2.5d" and lifted["slice_axis"] == 2  # axial slices, as the pipelines take them
    assert meta["intensity"]["crop"] == "head"
    # 16 voxels a side keep the 160x192x160 mm field of view (2 mm voxels would see the top 32 mm of the head)
    assert list(meta["intensity"]["spacing"]) == [10.0, 12.0, 10.0]
    assert "3D input: 16x16x16 voxels of 10x12x10 mm (field of view 160x192x160 mm, crop head)" in printed
    assert meta["init_weights"] == str(tmp / "run" / "model.pt")
    predict = next(line.strip() for line in printed.splitlines() if line.strip().startswith("medtl predict"))
    assert main([*shlex.split(predict)[1:], "--no-progress"]) == 0
    assert "ok, 0 error(s)" in capsys.readouterr().out
    # without --image-size, as docs/own_data.md writes it: the 3D default, not the 2D checkpoint's size (a review
    # got "--image-size: 3D volumes need three sizes, got [64]", an option it never gave)
    plain = [a for a in common if a not in ("--image-size", "16")]
    assert main(["train", *plain, "--lift", "2.5d", "--out", str(tmp_path / "default3d")]) == 0
    assert "3D input: 80x96x80 voxels of 2x2x2 mm" in capsys.readouterr().out


def test_the_printed_evaluate_gives_the_manifest_as_labels_when_training_from_a_manifest(tmp_path):
    """From a manifest the printed evaluate had no --labels: predict's results carry label and split but not the
    patient ids, so its intervals resampled images singly and came out narrower than train's report."""
    from types import SimpleNamespace

    from medtl.pipeline.train import next_commands

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,patient_id,domain,split,modality\n")
    inputs = SimpleNamespace(manifests={"train": manifest, "test": manifest}, roots={"train": tmp_path, "test": tmp_path})
    result = SimpleNamespace(out=tmp_path / "run", model=tmp_path / "run" / "model.pt", inputs=inputs)
    predict, evaluate = next_commands(result, manifest)
    assert f"--input {manifest} --data-root {tmp_path}" in predict
    assert f"--labels {manifest}" in evaluate


def test_3d_sizes_keep_the_field_of_view_unless_a_spacing_is_given():
    from medtl.errors import MedtlError
    from medtl.pipeline.train import _preset_options

    assert _preset_options("mri3d", None) == ([80, 96, 80], {"volume_shape": (80, 96, 80), "spacing": (2.0, 2.0, 2.0)})
    assert _preset_options("mri3d", [40, 48, 40])[1]["spacing"] == (4.0, 4.0, 4.0)
    assert _preset_options("mri3d", [40, 48, 40], [3])[1]["spacing"] == (3.0, 3.0, 3.0)
    with pytest.raises(MedtlError, match="three sizes"):
        _preset_options("mri3d", [40, 48])
    with pytest.raises(MedtlError, match=r"three sizes \(e\.g\. 80 96 80\), got \[40\]"):  # was silently 80 96 80
        _preset_options("mri3d", 40)
    with pytest.raises(MedtlError, match="one or three positive voxel sizes"):
        _preset_options("mri3d", [40, 48, 40], [1, 2])
    with pytest.raises(MedtlError, match="--spacing sets the voxel size of 3D volumes; these images are cxr"):
        _preset_options("cxr", 64, 2.0)


def test_pretrain_on_volumes_keeps_the_field_of_view_at_a_smaller_size(data_root, tmp_path, one_torch_thread, capsys):
    """medtl pretrain --image-size 16 16 16 on brain volumes used 2 mm voxels: the model saw the top 32 mm of each
    head. Three sizes now keep the 160x192x160 mm field of view; --spacing chooses the voxel size."""
    m = Manifest.load("data_manifests/mri3d_ixi.csv").sample(2)
    m.save(tmp_path / "ixi.csv")
    common = ["pretrain", "--manifest", str(tmp_path / "ixi.csv"), "--data-root", str(data_root), "--arch", "resnet10",
              "--image-size", "16", "16", "16", "--epochs", "1", "--batch-size", "2", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "kept")]) == 0
    meta = torch.load(tmp_path / "kept" / "model.pt", weights_only=True)["meta"]
    assert list(meta["intensity"]["spacing"]) == [10.0, 12.0, 10.0] and list(meta["intensity"]["volume_shape"]) == [16] * 3
    assert main([*common[:7], "--image-size", "16", *common[11:], "--out", str(tmp_path / "one")]) == 0
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["meta"]["intensity"]
    assert list(one["spacing"]) == [10.0, 12.0, 10.0] and list(one["volume_shape"]) == [16] * 3  # one size: a cube
    assert main([*common, "--spacing", "3", "--out", str(tmp_path / "given")]) == 0
    assert list(torch.load(tmp_path / "given" / "model.pt", weights_only=True)["meta"]["intensity"]["spacing"]) == [3.0] * 3
    capsys.readouterr()


def test_the_positive_class_is_printed_chosen_and_every_class_must_be_in_training(trained, tmp_path, capsys, caplog):
    """abnormal/normal made 'normal' positive with nothing said; a test folder of one class had its labels
    indexed by its own class list (tumor became 0, the model's no_tumor); a train split without a class trained."""
    from medtl.data.datasets import build_dataset
    from medtl.errors import MedtlError
    from medtl.pipeline.train import gather_inputs

    tmp, folder, _ = trained
    inputs = gather_inputs(folder, tmp_path / "g", positive_class="no_tumor", progress=False)
    assert inputs.label_names == ["tumor", "no_tumor"]
    assert all(m.label_names == ["tumor", "no_tumor"] for m in inputs.splits.values())
    with pytest.raises(MedtlError, match=r"'glioma' is not one of the two classes; the labels are"):
        gather_inputs(folder, tmp_path / "g", positive_class="glioma", progress=False)
    tumors = _copy(folder, tmp_path / "tumors_only", ("tumor",), 0, 3)
    inputs = gather_inputs(tmp / "run" / "manifest.csv", tmp_path / "g", test=tumors, progress=False)
    assert inputs.splits["test"].label_names == ["no_tumor", "tumor"]
    ds = build_dataset(inputs.splits["test"], inputs.roots["test"], "mri2d", image_size=16, cache="none")
    # (copies of training images leave the test set; the one left is not in the train split)
    assert len(ds) >= 1 and [int(ds[i]["label"]) for i in range(len(ds))] == [1] * len(ds)
    m = Manifest.load(tmp / "run" / "manifest.csv")
    one_class = Manifest([r for r in m if not (r.split == "train" and r.label == "no_tumor")], m.label_names, m.meta)
    one_class.save(tmp_path / "one_class.csv", data_root=folder)
    assert main(["train", "--train", str(tmp_path / "one_class.csv"), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "needs training images of at least two classes; the train split has none of ['no_tumor']" in \
        capsys.readouterr().err
    small = [*FAST[:1], "16", *FAST[2:]]  # a 16 px input is below the encoder's last-stage cell: said
    with caplog.at_level("WARNING", logger="medtl.engine.pretrain"):
        assert main(["train", "--train", str(folder), "--positive-class", "no_tumor", "--out", str(tmp_path / "pc"),
                     *small]) == 0
    assert "image size 16 is smaller than the encoder's last-stage cell (32 px)" in caplog.text
    out = capsys.readouterr().out
    assert "labels ['tumor', 'no_tumor'] (positive class no_tumor)" in out and ", positive class no_tumor," in out
    assert torch.load(tmp_path / "pc" / "model.pt", weights_only=True)["meta"]["label_names"] == ["tumor", "no_tumor"]
    report = json.loads((tmp_path / "pc" / "report.json").read_text())
    assert report["tasks"]["label"]["positive_class"] == "no_tumor"


def test_medtl_report_compares_two_trained_models_with_a_paired_test(trained, tmp_path, capsys):
    """Every medtl train run wrote strategy 'full' and run id seed0: report refused two runs at one seed and pooled
    two at different seeds as seeds of one strategy. The strategy is now the model's name."""
    tmp, folder, _ = trained
    assert main(["train", "--train", str(folder), "--out", str(tmp_path / "slower"), *FAST, "--lr", "3e-4"]) == 0
    assert main(["report", str(tmp / "run" / "predictions.csv"), str(tmp_path / "slower" / "predictions.csv"),
                 "--out", str(tmp_path / "cmp"), "--n-boot", "50"]) == 0
    capsys.readouterr()
    task = json.loads((tmp_path / "cmp" / "report.json").read_text())["tasks"]["label"]
    assert sorted(task["strategies"]) == ["medtl-resnet10-mri2d-run", "medtl-resnet10-mri2d-slower"]
    (c,) = task["comparisons"]
    assert c.get("note") is None and c["p_value"] is not None and c["test"].startswith("DeLong")
    # the second model trained into a folder of the first one's name (b/run): one strategy name for both
    import pandas as pd

    other = tmp_path / "b" / "run"
    other.mkdir(parents=True)
    pd.read_csv(tmp_path / "slower" / "predictions.csv", dtype=str).assign(
        strategy="medtl-resnet10-mri2d-run").to_csv(other / "predictions.csv", index=False)
    assert main(["report", str(tmp / "run" / "predictions.csv"), str(other / "predictions.csv"),
                 "--out", str(tmp_path / "cmp2"), "--n-boot", "50"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "cmp2" / "report.json").read_text())
    names = sorted(report["tasks"]["label"]["strategies"])
    assert len(names) == 2 and all(n.startswith("medtl-resnet10-mri2d-run [") for n in names), names
    (c2,) = report["tasks"]["label"]["comparisons"]
    assert c2["p_value"] == pytest.approx(c["p_value"])  # the same two models, the same paired test
    assert any("each strategy is named with its file's folder" in n for n in report["notes"])
    one = str(tmp / "run" / "predictions.csv")  # one file given twice: refused, naming it (not "<DataFrame>")
    assert main(["report", one, one, "--out", str(tmp_path / "cmp3"), "--n-boot", "50"]) == 2
    assert f"the same predictions file is given more than once: {Path(one).resolve()}" in capsys.readouterr().err


def test_a_test_folder_laid_out_as_the_training_one_is_scored(trained, tmp_path, capsys):
    """A separate --test folder whose files have the training folder's relative paths (tumor/Y105.jpg in both)
    stopped medtl train after training: its test rows and the val rows shared case ids in one table."""
    tmp, folder, _ = trained
    copy = shutil.copytree(folder, tmp_path / "site_b")
    assert main(["train", "--train", str(folder), "--test", str(copy), "--out", str(tmp_path / "run"), *FAST]) == 0
    capsys.readouterr()
    import pandas as pd

    preds = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype=str)
    test = preds[preds["split"] == "test"]
    # the copies of the train split's images leave the test set (scored, they were the model's own training
    # images); the rest are scored under their own case ids
    learned = {r.path for r in Manifest.load(tmp_path / "run" / "manifest.csv") if r.split == "train"}
    assert 0 < len(test) <= 24 - len(learned) and test["case_id"].str.startswith("site_b/").all()
    assert not {c.removeprefix("site_b/") for c in test["case_id"]} & learned
    assert not preds["case_id"].duplicated().any()


def test_a_separate_test_folder_keeps_its_near_copies_together_for_the_intervals(trained, data_root, tmp_path):
    """A review: a --test folder of 30 images plus a re-encoded copy of each got intervals over 60 independent images
    (too narrow), while the same predictions scored through a built manifest used 29 units: the separate folder's
    near-copies were never grouped."""
    from PIL import Image

    from medtl.pipeline.train import gather_inputs

    tmp, folder, _ = trained
    test = tmp_path / "site_c"  # another collection's slices, none a copy of a training image
    rows = Manifest.load("data_manifests/mri2d_tumor4.csv").rows
    for ours, theirs in (("no_tumor", "notumor"), ("tumor", "glioma")):
        (test / ours).mkdir(parents=True)
        for r in [r for r in rows if r.label == theirs and r.split == "test"][:3]:
            image = Image.open(data_root / r.path).convert("L")
            image.save(test / ours / Path(r.path).with_suffix(".png").name)
            image.save(test / ours / (Path(r.path).stem + "_copy.jpg"), quality=90)  # each again, re-encoded
    inputs = gather_inputs(folder, tmp_path / "g", test=test, progress=False)
    rows = inputs.splits["test"].rows
    groups = {r.extras.get("near_copy_group") for r in rows}
    assert len(rows) == 12 and None not in groups and len(groups) <= 6
    group = {Path(r.path).name.removesuffix("_copy.jpg").removesuffix(".png"): set() for r in rows}
    for r in rows:  # each image and its copy in one group: one unit of the bootstrap
        group[Path(r.path).name.removesuffix("_copy.jpg").removesuffix(".png")].add(r.extras["near_copy_group"])
    assert len(group) == 6 and all(len(g) == 1 for g in group.values())


def test_running_a_finished_train_again_keeps_its_model_file(trained, one_torch_thread, tmp_path, capsys):
    """A review: the same medtl train command run again on its finished folder rewrote model.pt with a new
    created_utc, so the model's version (the file's hash) changed and the printed medtl predict, resuming into its
    folder, was refused as another model."""
    tmp, folder, _ = trained
    model = tmp / "run" / "model.pt"
    before = model.read_bytes()
    out = tmp_path / "predict"
    assert main(["predict", "--model", str(model), "--input", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert main(["train", "--train", str(folder), "--out", str(tmp / "run"), *FAST]) == 0
    assert model.read_bytes() == before
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "24 already done" in capsys.readouterr().out


def test_images_the_init_model_learned_from_never_score_the_new_model(trained, one_torch_thread, data_root, tmp_path,
                                                                       caplog):
    """A review: medtl train --init on the folder the init model was trained on, with another seed, drew a new split
    whose test images included the init model's training images, without a word: the scores were optimistic."""
    from PIL import Image

    from medtl.pipeline.train import gather_inputs

    tmp, folder, _ = trained
    model = tmp / "run" / "model.pt"
    learned = {r.path for r in Manifest.load(tmp / "run" / "manifest.csv").rows if r.split == "train"}
    held = lambda inputs: {r.path for role in ("val", "test") for r in inputs.splits[role]}  # noqa: E731
    assert held(gather_inputs(folder, tmp_path / "a", seed=1, progress=False)) & learned  # the leak, without --init

    out = tmp_path / "b"
    with caplog.at_level("WARNING"):
        assert main(["train", "--train", str(folder), "--out", str(out), "--init", str(model), "--seed", "1",
                     *FAST]) == 0
    assert "the --init model learned from" in caplog.text and "moved into the train split" in caplog.text
    saved = Manifest.load(out / "manifest.csv")  # what the printed evaluate --labels reads
    assert not {r.path for r in saved.rows if r.split in ("val", "test")} & learned
    assert {r.path for r in saved.rows if r.split == "test"}, "the init model's own held-out images remain"
    import pandas as pd

    scored = set(pd.read_csv(out / "predictions.csv")["case_id"])
    assert scored and not scored & learned

    # a separate test set holding the init model's training images: they are left out of it
    other = tmp_path / "site_c"
    rows = Manifest.load("data_manifests/mri2d_tumor4_minus_yesno.csv").rows  # no copy of the folder's
    for ours, theirs in (("no_tumor", "notumor"), ("tumor", "glioma")):
        (other / ours).mkdir(parents=True)
        for r in [r for r in rows if r.label == theirs and r.split == "train"][:6]:
            Image.open(data_root / r.path).convert("L").save(other / ours / Path(r.path).with_suffix(".png").name)
    caplog.clear()
    with caplog.at_level("WARNING"):
        inputs = gather_inputs(other, tmp_path / "c", test=folder, progress=False, init=model)
    assert f"{len(learned)} of 24 test images are images the --init model learned from" in caplog.text
    assert {r.path for r in inputs.splits["test"]} == {r.path for r in Manifest.load(tmp / "run" / "manifest.csv").rows
                                                       if r.split != "train"}


def test_separate_val_and_test_sets_read_the_training_images_once(trained, data_root, tmp_path, monkeypatch):
    """The copy check scanned the whole train split again for each separate set (about a minute per 4,000 images)."""
    from PIL import Image

    import medtl.data.build as build
    from medtl.pipeline.train import gather_inputs

    _, folder, _ = trained
    rows = Manifest.load("data_manifests/mri2d_tumor4_minus_yesno.csv").rows
    for role in ("val", "test"):
        for ours, theirs in (("no_tumor", "notumor"), ("tumor", "glioma")):
            (tmp_path / role / ours).mkdir(parents=True)
            for r in [r for r in rows if r.label == theirs and r.split == role][:3]:
                Image.open(data_root / r.path).convert("L").save(tmp_path / role / ours / Path(r.path).name)
    scans, real = [], build.scan
    monkeypatch.setattr(build, "scan", lambda rows, *a, **k: scans.append(k.get("desc")) or real(rows, *a, **k))
    inputs = gather_inputs(folder, tmp_path / "g", val=tmp_path / "val", test=tmp_path / "test", progress=False)
    assert len(inputs.splits["val"]) == len(inputs.splits["test"]) == 6
    assert scans.count("near-copy scan (other set)") == 1 and scans.count("near-copy scan (this set)") == 2


def test_a_held_out_folder_scored_as_predict_says_leaves_out_copies_of_training_images(
        trained, one_torch_thread, data_root, tmp_path, monkeypatch, capsys):
    """A review: predict on a held-out folder printed a manifest build that kept copies of training images, so
    evaluate scored them (AUROC 0.857 against 0.500 on the unseen images); and model.pt recorded its training
    manifest relative to where medtl train ran, so from another folder predict lost it."""
    from PIL import Image

    tmp, folder, _ = trained
    monkeypatch.chdir(tmp)  # a model trained with a relative --out
    assert main(["train", "--train", "brain", "--out", "rel_run", *FAST]) == 0
    recorded = torch.load(tmp / "rel_run" / "model.pt", weights_only=True)["meta"]["manifest"]
    assert recorded == str(tmp / "rel_run" / "manifest.csv")
    learned = Manifest.load(tmp / "rel_run" / "manifest.csv")
    held = tmp_path / "heldout"
    rows = Manifest.load(Path(__file__).parents[2] / "data_manifests" / "mri2d_tumor4_minus_yesno.csv").rows
    for ours, theirs in (("no_tumor", "notumor"), ("tumor", "glioma")):
        (held / ours).mkdir(parents=True)
        for r in [r for r in learned.rows if r.label == ours and r.split == "train"][:2]:  # copies of training images
            shutil.copy(folder / r.path, held / ours / f"again_{Path(r.path).name}")
        for r in [r for r in rows if r.label == theirs and r.split == "test"][:2]:  # images it never saw
            Image.open(data_root / r.path).convert("L").save(held / ours / Path(r.path).with_suffix(".png").name)
    monkeypatch.chdir(tmp_path)  # predict run from another folder
    capsys.readouterr()
    model = tmp / "rel_run" / "model.pt"
    assert main(["predict", "--model", str(model), "--input", "heldout", "--out", "pred", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    build = next(line.strip(" (") for line in printed.splitlines() if "medtl manifest build" in line)
    build = build[build.index("medtl manifest build"):].split(";")[0]
    assert f"--exclude-near-copies-of {tmp / 'rel_run' / 'manifest.csv'}" in build
    assert main(shlex.split(build.replace("LABELS.csv", "labels.csv"))[1:]) == 0
    evaluate = next(line.strip() for line in printed.splitlines() if line.strip().startswith("medtl evaluate"))
    assert main([*shlex.split(evaluate.replace("LABELS.csv", "labels.csv"))[1:], "--n-boot", "50"]) == 0
    assert "test n=4," in capsys.readouterr().out  # the 4 unseen images; the 4 copies left out

    monkeypatch.chdir(tmp)  # and from there the training folder's own manifest is found too
    assert main(["predict", "--model", str(model), "--input", "brain", "--out", str(tmp_path / "p2"),
                 "--no-progress"]) == 0
    assert f"--labels {tmp / 'rel_run' / 'manifest.csv'}" in capsys.readouterr().out


def test_a_training_manifest_is_not_overwritten_by_manifest_build(trained, capsys):
    """A review: `medtl manifest build --out <train folder>` replaced the model's manifest with new splits, and
    evaluate with it scored 8 training images as test."""
    tmp, folder, _ = trained
    before = (tmp / "run" / "manifest.csv").read_bytes()
    assert main(["manifest", "build", "--from", str(folder), "--data-root", str(folder), "--out", str(tmp / "run"),
                 "--seed", "1"]) == 2
    assert "the manifest a medtl train run in this folder trained from" in capsys.readouterr().err
    assert (tmp / "run" / "manifest.csv").read_bytes() == before
