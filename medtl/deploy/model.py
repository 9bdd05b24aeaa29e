"""The small model interface batch inference needs, and the adapters that build it.

Batch inference does not care how a model was trained; it needs to know how to prepare an image
(the data-layer preset and its options, as stored in the checkpoint), what the outputs mean
(``label_names``, ``threshold``), what to call it in reports (``name``, ``version``) and a
``predict(batch) -> probabilities`` callable. :class:`Predictor` holds exactly that.

Sources understood by :func:`load_model`:

- a medtl checkpoint file (``medtl.models.checkpoint``): architecture and weights from the file;
- a MONAI bundle folder exported by :func:`medtl.deploy.bundle.export_bundle`;
- any ``nn.Module`` returning logits, through :meth:`Predictor.from_module` (tests, notebooks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtl.data.transforms import Preset
from medtl.errors import MedtlError
from medtl.models.checkpoint import build_model, load_checkpoint, with_recorded_options
from medtl.models.weights import check_and_load, read_file
from medtl.paths import file_sha256, read_json

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """What batch inference knows about a model. ``predict`` maps ``(B, C, *spatial)`` to ``(B, K)``."""

    name: str
    version: str
    label_names: list[str]
    preprocess: dict[str, Any]  # {"preset": "cxr" | "mri2d" | "mri3d", **preset options}
    predict: Callable[[torch.Tensor], torch.Tensor]
    threshold: float | None = 0.5  # binary: P(label_names[1]) >= threshold -> positive; else argmax
    spatial_dims: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    digest: str = ""  # sha256 of the weights file: a rerun into the same --out must use the same model
    meta: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"  # or "regression": predict gives (B, 1) values in the target's units

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    @property
    def preset(self) -> str:
        return str(self.preprocess["preset"])

    @property
    def preset_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.preprocess.items() if k != "preset"}

    def decide(self, probs: list[float]) -> str:
        """The predicted label for one probability vector."""
        if len(probs) == 2 and self.threshold is not None:
            return self.label_names[1] if probs[1] >= self.threshold else self.label_names[0]
        return self.label_names[max(range(len(probs)), key=probs.__getitem__)]

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        label_names: list[str],
        preprocess: dict[str, Any],
        name: str = "model",
        version: str = "0",
        threshold: float | None = 0.5,
        device: str | torch.device | None = None,
        digest: str = "",
        meta: dict[str, Any] | None = None,
        regression: bool = False,
    ) -> Predictor:
        """Wrap a module giving logits ``(B, K)``: softmax, eval mode, autocast as ``meta["precision"]`` says
        (the checkpoint's policy, resolved by ``medtl.engine.inference.precision_dtype``; "auto" without one).
        ``regression``: the module gives ``(B, 1)`` values (``label_names`` names the one output), kept as they are."""
        from medtl.engine.inference import forward_batch, precision_dtype, to_channels_last, uses_channels_last

        if "preset" not in preprocess:
            raise MedtlError("preprocess must name the data preset ('cxr', 'mri2d' or 'mri3d')", "preprocess")
        from medtl.engine.trainer import resolve_device

        dev = resolve_device(str(device), where="device") if device is not None else _default_device()
        module = module.to(dev).eval()
        dtype = precision_dtype(str((meta or {}).get("precision") or "auto"), dev)  # as the model was evaluated
        if uses_channels_last(dtype):  # once: forward_batch puts each input batch in the same layout
            to_channels_last(module)
        wanted = ("logits",) if regression else ("logits", "probs")

        @torch.no_grad()
        def predict(batch: torch.Tensor) -> torch.Tensor:
            out = forward_batch(module, {"image": batch}, wanted, dev, dtype)
            if out["logits"].ndim != 2 or out["logits"].shape[1] != len(label_names):
                raise MedtlError(f"model gave outputs of shape {tuple(out['logits'].shape)}; expected "
                                 f"(B, {len(label_names)})", name)
            return out["logits"] if regression else out["probs"]

        spatial = Preset(preprocess["preset"]).spatial_dims
        return cls(name, version, list(label_names), dict(preprocess), predict,
                   None if len(label_names) != 2 or regression else threshold, spatial, dev, digest, dict(meta or {}),
                   "regression" if regression else "classification")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predictor_from_meta(module: nn.Module, meta: dict[str, Any], where: str, digest: str,
                        device: str | torch.device | None = None, threshold: float | None = None) -> Predictor:
    """A :class:`Predictor` from a rebuilt module and the checkpoint's ``meta`` (see checkpoint.py)."""
    head = (meta.get("model") or {}).get("head") or {}
    # The head says what it computes; meta["task"] may hold a pipeline's task name in older checkpoints.
    task = head.get("task") or meta.get("task")
    if head.get("kind", "classifier") != "classifier" or task not in ("binary", "multiclass", "regression"):
        raise MedtlError("batch prediction needs a classifier (binary or multiclass) or a regression head; this "
                         f"model's head is {head.get('kind')!r} with task {task!r}", where)
    regression = task == "regression"
    # a regression model's one output is named after its task (e.g. "age"): results get predicted_<name>
    labels = [str(meta.get("task_name") or "value")] if regression else meta.get("label_names")
    intensity = meta.get("intensity")
    missing = ([] if labels else ["label_names (the class of each output)"]) + (
        [] if isinstance(intensity, dict) and "preset" in intensity else ["intensity (its preprocessing: a preset "
                                                                          "and its options)"])
    if missing:
        raise MedtlError(f"the model does not record {' and '.join(missing)}. A model trained in Python records them "
                         "when fit's checkpoint_meta is the deployment of the dataset it is to predict "
                         "(fit(..., checkpoint_meta=target_ds.deployment); plain supervised fit takes them from "
                         "its train_loader); add them to a written checkpoint with medtl.models.checkpoint."
                         "update_checkpoint_meta(path, **dataset.deployment) (docs/models.md)", where)
    name = str(meta.get("name") or f"medtl-{meta.get('architecture') or 'model'}-{intensity['preset']}")
    # Without an explicit version the weights' own hash is one: it names exactly these weights.
    version = str(meta.get("version") or digest[:12] or "0")
    chosen = threshold if threshold is not None else meta.get("threshold", 0.5)
    if not isinstance(chosen, (int, float)) or isinstance(chosen, bool) or not 0.0 <= float(chosen) <= 1.0:
        # NaN too: no probability reaches it, so every case would be called negative, silently
        raise MedtlError(f"decision threshold {chosen!r} is not a probability in [0, 1]",
                         "threshold" if threshold is not None else where)
    if threshold is None and "threshold" not in meta and len(labels) == 2 and not regression:
        # e.g. medtl train's best.pt (the training checkpoint): its model.pt carries the chosen threshold
        log.warning("%s records no decision threshold, so decisions (and SRs) use 0.5; if this is medtl train's "
                    "best.pt, use the model.pt beside it, which carries the threshold chosen on validation, or "
                    "give --threshold", where)
    return Predictor.from_module(module, label_names=list(labels), preprocess=dict(intensity), name=name,
                                 version=version, threshold=float(chosen), device=device, digest=digest, meta=meta,
                                 regression=regression)


def load_model(path: str | Path, device: str | torch.device | None = None,
               threshold: float | None = None) -> Predictor:
    """A :class:`Predictor` from a medtl checkpoint file or a MONAI bundle folder (``threshold`` overrides)."""
    p = Path(path)
    if not p.exists():
        raise MedtlError("model not found", p)
    if p.is_dir():
        return load_bundle(p, device=device, threshold=threshold)
    module, meta = load_checkpoint(p, map_location="cpu")
    return predictor_from_meta(module, meta, str(p), file_sha256(p), device, threshold)


# A MONAI bundle's files (medtl.deploy.bundle writes them); read here, so load_model needs no import of bundle.py.
BUNDLE_METADATA = Path("configs/metadata.json")
BUNDLE_WEIGHTS = Path("models/model.pt")


def load_bundle(folder: str | Path, device: str | torch.device | None = None,
                threshold: float | None = None) -> Predictor:
    """A :class:`Predictor` from a bundle written by :func:`medtl.deploy.bundle.export_bundle`."""
    folder = Path(folder)
    meta_file, weights = folder / BUNDLE_METADATA, folder / BUNDLE_WEIGHTS
    for f in (meta_file, weights):
        if not f.is_file():
            raise MedtlError(f"not a MONAI bundle: {f.relative_to(folder)} is missing", folder)
    meta = read_json(meta_file, "the bundle's metadata")
    meta = meta.get("medtl") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not meta.get("model"):
        raise MedtlError("this bundle was not exported by medtl (metadata.json has no 'medtl' model description)",
                         meta_file)
    meta = with_recorded_options(meta)
    model = build_model(meta["model"])
    check_and_load(model, read_file(weights), where=str(weights))
    return predictor_from_meta(model.eval(), meta, str(folder), file_sha256(weights), device, threshold)
