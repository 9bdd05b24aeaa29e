"""MONAI bundle export: MONAI's own tooling loads and runs it; medtl predict accepts it."""

import json
import shutil

import pytest
import torch

from medtl.deploy import export_bundle, load_model, predict_batch
from medtl.deploy.discover import scan_files
from medtl.deploy.inputs import SeriesLoader
from medtl.engine.inference import precision_dtype
from medtl.errors import MedtlError

pytestmark = [pytest.mark.real_data, pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")]


@pytest.fixture(scope="module")
def bundle(model_2d, tmp_path_factory):
    return export_bundle(model_2d, tmp_path_factory.mktemp("bundles") / "cxr")


def test_layout_and_metadata(bundle, model_2d):
    for part in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (bundle / part).is_file(), part
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "no_finding", "1": "pneumonia"}
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)  # a plain state dict
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    with pytest.raises(MedtlError, match="already exists"):
        export_bundle(model_2d, bundle)


def test_monai_runs_the_bundle_on_one_image(bundle, model_2d, data_root, tmp_path):
    from monai.bundle import run

    image = min((data_root / "cxr_nih" / "images" / "pneumonia").glob("*.png"))
    out = tmp_path / "prediction.json"
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False, bundle_root=str(bundle), image=str(image), output_path=str(out))
    got = json.loads(out.read_text())["probabilities"]
    # The same numbers as medtl's own path from the original checkpoint.
    predictor = load_model(model_2d, device="cpu")
    (series,) = scan_files([image], image.parent)
    expected = predictor.predict(SeriesLoader(predictor.preset, predictor.preset_options)(series))[0].tolist()
    assert list(got) == ["no_finding", "pneumonia"]
    # MONAI runs the bundle in fp32; medtl's predictor in the checkpoint's precision (bf16 on a native-bf16 CPU)
    tolerance = 1e-5 if precision_dtype(predictor.meta.get("precision", "auto"), "cpu") is None else 2e-3
    assert list(got.values()) == pytest.approx(expected, abs=tolerance)


def test_the_documented_monai_command_runs_the_bundle(bundle, data_root, tmp_path):
    """docs/batch.md's command, as a user types it (MONAI's command line, which needs ``fire``)."""
    import subprocess
    import sys

    image = min((data_root / "cxr_nih" / "images" / "pneumonia").glob("*.png"))
    out = tmp_path / "prediction.json"
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--meta_file",
                           str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle), "--image", str(image),
                           "--output_path", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(out.read_text())["probabilities"]
    assert list(got) == ["no_finding", "pneumonia"] and sum(got.values()) == pytest.approx(1.0, abs=1e-5)


def test_medtl_predict_accepts_the_bundle(bundle, model_2d, dicom_root, tmp_path):
    from_bundle, from_checkpoint = load_model(bundle, device="cpu"), load_model(model_2d, device="cpu")
    assert (from_bundle.name, from_bundle.version) == (from_checkpoint.name, from_checkpoint.version)
    assert from_bundle.preprocess == from_checkpoint.preprocess
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(dicom_root / "emri_small_multiframe_mr.dcm", folder)
    result = predict_batch(bundle, folder, tmp_path / "out", progress=False)
    (row,) = result.rows
    assert row["status"] == "ok" and row["n_images"] == 10 and row["model_version"] == from_checkpoint.version


def test_a_value_monai_would_run_as_code_is_refused_at_export(tmp_path):
    """A security review: a label folder named "$__import__('os').system('touch PWNED') or 'pneumonia'" trained and
    exported, and MONAI's bundle parser ran it when the bundle ran ('$' is code to it, '@' a reference, '%' a macro,
    with no escape). The export refuses such a value (label names, options, the bundle's name); nothing is written."""
    from medtl.models import Head, Model, build_encoder, save_checkpoint

    def _save(path, _dims, intensity, labels, **meta):  # a random-weight 2D classifier, as the fixtures make
        encoder = build_encoder("resnet10", spatial_dims=2, in_channels=1)
        model = Model(encoder, Head(encoder.out_features, "binary", 2))
        return save_checkpoint(path, model, intensity=intensity, label_names=labels, **meta)

    payload = f"$__import__('pathlib').Path({str(tmp_path / 'PWNED')!r}).touch() or 'pneumonia'"
    hostile = _save(tmp_path / "hostile.pt", 2, {"preset": "cxr", "image_size": 32, "clahe": False},
                    ["no_finding", payload], image_size=32)
    with pytest.raises(MedtlError, match=r"label_names'\]\[1\] is .* starts with '\$'"):
        export_bundle(hostile, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "PWNED").exists()
    plain = _save(tmp_path / "plain.pt", 2, {"preset": "cxr", "image_size": 32, "clahe": False},
                  ["no_finding", "pneumonia"], image_size=32)
    with pytest.raises(MedtlError, match="the bundle name is '@network_def'"):
        export_bundle(plain, tmp_path / "named", name="@network_def")


def test_a_broken_bundle_metadata_file_is_named(bundle, tmp_path):
    """A review: invalid or deeply nested metadata.json gave 'internal error (JSONDecodeError...)', no file named."""
    broken = shutil.copytree(bundle, tmp_path / "broken")
    for text, why in (("{", "not valid JSON"), ("[" * 100_000, "nested too deeply")):
        (broken / "configs" / "metadata.json").write_text(text)
        with pytest.raises(MedtlError, match=why) as err:
            load_model(broken, device="cpu")
        assert "metadata.json" in str(err.value)


def test_the_bundle_readme_states_the_decision_rule_medtl_predict_uses(bundle, model_2d, tmp_path):
    """A hospital-IT review: the bundle's README said "softmax probabilities" only, so a MONAI-runner user took the
    larger one, and 2 of 4 images got the other label than medtl predict, which decides at the stored threshold."""
    from medtl.models.checkpoint import update_checkpoint_meta

    assert "Decision: the class with the largest probability" in (bundle / "docs" / "README.md").read_text()
    ckpt = shutil.copy(model_2d, tmp_path / "thr.pt")
    update_checkpoint_meta(ckpt, threshold=0.3, threshold_rule={"rule": "youden"})
    readme = (export_bundle(ckpt, tmp_path / "b") / "docs" / "README.md").read_text()
    assert ("Decision: pneumonia when its probability is at least 0.3, else no_finding (the threshold chosen on the "
            "validation split by youden") in readme and "not the larger probability" in readme
