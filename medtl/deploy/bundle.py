"""A trained medtl classifier as a MONAI Bundle, and back.

Layout (MONAI bundle specification)::

    <bundle>/configs/metadata.json    MONAI metadata + "medtl": the checkpoint's own meta (plain values)
    <bundle>/configs/inference.json   builds the network, loads the weights, predicts one image
    <bundle>/models/model.pt          the network's state dict (torch.save of plain tensors)
    <bundle>/docs/README.md           what goes in, what comes out, how to run it

Run with MONAI's own tooling (medtl must be importable: the network and the preprocessing are medtl's)::

    python -m monai.bundle run --config_file <bundle>/configs/inference.json \\
        --meta_file <bundle>/configs/metadata.json --bundle_root <bundle> --image <file> --output_path out.json

``medtl predict --model <bundle>`` reads the same folder (:func:`medtl.deploy.model.load_bundle`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medtl import __version__
from medtl.deploy.model import BUNDLE_METADATA, BUNDLE_WEIGHTS, load_model
from medtl.errors import MedtlError
from medtl.models.checkpoint import read_checkpoint
from medtl.paths import file_sha256


# MONAI's bundle parser reads a string that starts with "$" as Python code to run, "@" as a reference and "%"
# as a macro, with no way to escape them: a label "$__import__('os').system(...)" would run when the bundle runs
CONFIG_SYNTAX = ("$", "@", "%")


def _refuse_config_syntax(value: Any, where: str) -> None:
    """Refuse a value from the checkpoint (label names, model and preprocessing options, its meta) or the user that
    MONAI's parser would read as code, a reference or a macro."""
    if isinstance(value, str) and value.startswith(CONFIG_SYNTAX):
        raise MedtlError(f"{where} is {value[:80]!r}, which starts with {value[0]!r}: MONAI's bundle parser would read "
                         "it as code ('$'), a reference ('@') or a macro ('%'), so the bundle could run it; rename it "
                         "before exporting (a label: retrain with other label names; a folder or domain name: rename "
                         "it and train again; a --name: choose another)", "export-bundle")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_config_syntax(str(key), f"{where}: a key")
            _refuse_config_syntax(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_config_syntax(item, f"{where}[{i}]")


def _inference_config(meta: dict[str, Any]) -> dict[str, Any]:
    intensity = dict(meta["intensity"])
    preset = intensity.pop("preset")
    return {
        # "from" imports: MONAI binds "import a.b" under the name "a.b", not "a".
        "imports": ["$import json", "$import os", "$import torch",
                    "$from medtl.models.checkpoint import build_model",
                    "$from medtl.data.transforms import preset_chain"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "label_names": list(meta["label_names"]),
        "model_config": meta["model"],
        "network_def": "$build_model(@model_config)",
        "network": "$@network_def.to(@device).eval()",
        "checkpoint": "$os.path.join(@bundle_root, 'models', 'model.pt')",
        "load_weights": "$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, weights_only=True))",
        "preset": preset,
        "preset_options": intensity,
        # The medtl preset chain the model was trained with (loader, scaling, resizing, z-score).
        "preprocessing": "$preset_chain(@preset, False, **@preset_options)",
        "image": "",
        "output_path": "$os.path.join(@bundle_root, 'eval', 'prediction.json')",
        "inputs": "$@preprocessing({'image': @image})['image'][None].float().to(@device)",
        "probabilities": "$torch.softmax(@network(@inputs).float(), 1)[0].tolist()",
        "initialize": ["$@load_weights"],
        "run": [
            "$os.makedirs(os.path.dirname(os.path.abspath(@output_path)), exist_ok=True)",
            ("$json.dump({'image': @image, 'probabilities': dict(zip(@label_names, @probabilities))},"
             " open(@output_path, 'w'), indent=2)"),
        ],
        "finalize": [],
    }


def _metadata(meta: dict[str, Any], name: str) -> dict[str, Any]:
    import monai
    import numpy

    labels = list(meta["label_names"])
    intensity = meta["intensity"]
    spatial = meta.get("image_size") or intensity.get("volume_shape") or [intensity.get("image_size")] * 2
    return {
        "name": name,
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by medtl"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"medtl": __version__},
        "task": f"{meta.get('task', 'classification')} classification: {', '.join(labels)}",
        "description": f"medtl {meta.get('architecture')} classifier, preprocessing preset {intensity.get('preset')!r}",
        "authors": "medtl",
        "copyright": "see the training data's terms",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": str(intensity.get("preset")),
                "num_channels": int(meta.get("in_channels") or 1), "spatial_shape": list(spatial), "dtype": "float32",
                "value_range": [], "is_patch_data": False, "channel_def": {"0": "image"},
            }},
            "outputs": {"pred": {
                "type": "probabilities", "format": "classes", "num_channels": len(labels), "spatial_shape": [1],
                "dtype": "float32", "value_range": [0, 1], "is_onehot": False,
                "channel_def": {str(i): label for i, label in enumerate(labels)},
            }},
        },
        "medtl": meta,
    }


def export_bundle(checkpoint: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Write the MONAI bundle of a medtl classifier checkpoint to ``out`` (created; must not hold a bundle)."""
    predictor = load_model(checkpoint, device="cpu")  # refuses what batch inference cannot run
    obj = read_checkpoint(checkpoint)
    meta = dict(obj["meta"])
    # The bundle is the same model: keep its name and version, not the bundle file's own hash.
    meta.setdefault("name", predictor.name)
    meta["version"] = meta.get("version") or file_sha256(checkpoint)[:12]
    _refuse_config_syntax(meta, "the checkpoint's meta")
    if name is not None:
        _refuse_config_syntax(name, "the bundle name")
    out = Path(out)
    if (out / BUNDLE_METADATA).exists():
        raise MedtlError("a bundle already exists here; choose a new folder", out)
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save(obj["state_dict"], out / BUNDLE_WEIGHTS)
    bundle_name = name or str(meta["name"])
    (out / BUNDLE_METADATA).write_text(json.dumps(_metadata(meta, bundle_name), indent=2) + "\n")
    (out / "configs" / "inference.json").write_text(json.dumps(_inference_config(meta), indent=2) + "\n")
    (out / "docs" / "README.md").write_text(_readme(meta, bundle_name))
    return out


def _decision(meta: dict[str, Any]) -> str:
    """How medtl predict turns the probabilities into a label: a bundle runner gives only the probabilities."""
    names, threshold = list(meta["label_names"]), meta.get("threshold")
    if len(names) == 2 and threshold is not None:
        rule = (meta.get("threshold_rule") or {}).get("rule")
        return (f"{names[1]} when its probability is at least {threshold:.6g}, else {names[0]} (the threshold "
                f"chosen on the validation split{f' by {rule}' if rule else ''}, metadata.json `medtl.threshold`); "
                "not the larger probability, which would decide at 0.5. `medtl predict` decides this way")
    return "the class with the largest probability (as `medtl predict` does)"


def _readme(meta: dict[str, Any], name: str) -> str:
    labels = ", ".join(meta["label_names"])
    intensity = meta["intensity"]
    return f"""# {name}

A medtl {meta.get('architecture')} classifier ({meta.get('task')}), exported as a MONAI bundle.

- Classes: {labels}. Output: softmax probabilities, one per class, in that order.
- Decision: {_decision(meta)}.
- Input: one image file (PNG/JPEG/DICOM/NIfTI) read and prepared by medtl's `{intensity.get('preset')}` preset
  with options `{json.dumps({k: v for k, v in intensity.items() if k != 'preset'})}`.
- Version: {meta.get('version')}. Training metrics recorded with the model: `{json.dumps(meta.get('metrics') or {})}`.

Run one image (needs `medtl` installed: the network and the preprocessing are medtl's):

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --bundle_root . --image /path/to/image.dcm --output_path prediction.json

Batch inference over folders, manifests or a DICOMweb PACS, with DICOM SR output:

    medtl predict --model . --input <folder|manifest.csv|http://host/dicom-web> --out results/ --sr

Not a medical device; research use only.
"""


__all__ = ["export_bundle"]
