"""The medtl model file: weights plus everything needed to use them, in plain types only.

``torch.load(path, weights_only=True)`` reads the whole file (no pickled code)::

    {
      "format": "medtl-checkpoint",
      "format_version": 1,
      "state_dict": {"encoder.<name>": Tensor, ..., "head.<name>": Tensor, ...},
      "meta": {
        "medtl_version": "0.1.0",
        "torch_version": "2.x",
        "created_utc": "2025-01-01T00:00:00+00:00",
        "model": {"encoder": {arch, spatial_dims, in_channels, stem_stride, ..., "lift": {...}?},
                  "head": {"kind": "classifier", task, num_classes, in_features, dropout}
                          | {"kind": "vae", latent_dim, image_size, ...}},
        "architecture": "resnet18",          # = model.encoder.arch, for people reading the file
        "in_channels": 1,
        "image_size": [128, 128],
        "intensity": {"preset": "cxr", ...}, # how images were normalised (data-layer preset + options)
        "label_names": ["no_finding", "pneumonia"],
        "task": "binary",                    # the head's task: binary | multiclass | regression
        "task_name": "tumor_vs_none",        # a pipeline's name for the task, when it has one
        "threshold": 0.42,                   # binary: the operating threshold chosen on validation
        "precision": "auto",                 # the autocast policy (engine.evaluate.precision_dtype), used
                                             # alike by training, evaluation and medtl predict
        "manifest_hash": "ab12...",          # Manifest.content_hash() of the training data
        "metrics": {"val_auroc": 0.81, ...},
        "seed": 0,
        ...                                  # free extra keys (mode, strategy, epochs, ...)
      }
    }
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtl import __version__
from medtl.data.transforms import DEFAULTS, recorded_options
from medtl.errors import MedtlError
from medtl.models.encoders import build_encoder
from medtl.models.formats import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, is_checkpoint
from medtl.models.heads import build_head
from medtl.models.weights import check_and_load, read_file
from medtl.plain import plain


class Model(nn.Module):
    """Encoder + head, as rebuilt from a checkpoint; ``forward`` gives the head's output."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor):
        return self.head(self.encoder(x))

    @property
    def config(self) -> dict[str, Any]:
        return model_config(self)


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """``{"encoder": ..., "head": ...}`` when both parts describe themselves, else None."""
    enc, head = getattr(model, "encoder", None), getattr(model, "head", None)
    if enc is None or head is None or not hasattr(enc, "config") or not hasattr(head, "config"):
        return None
    return {"encoder": dict(enc.config), "head": dict(head.config)}


# far above any model medtl builds (a 3D ResNet-50 has about 46 million): a checkpoint of a few kilobytes that
# declares a head of 3e9 classes would otherwise ask for terabytes before a single weight is checked
MAX_PARAMETERS = 1_000_000_000


def build_model(config: dict[str, Any]) -> Model:
    """A freshly initialised :class:`Model` from a ``meta["model"]`` config (its size checked first, on the meta
    device, where building allocates nothing)."""
    def size(build, part: str) -> int:
        try:
            with torch.device("meta"):
                return sum(p.numel() for p in build().parameters())
        except (RuntimeError, NotImplementedError) as err:  # a layer that reads a tensor's value while it is built
            raise MedtlError(f"cannot size the model's {part} before building it ({str(err)[:120]}): refused, as a "
                             "config of unknown size could ask for any amount of memory", "meta.model") from None

    try:
        n = size(lambda: build_encoder(config["encoder"]), "encoder") + size(lambda: build_head(config["head"]), "head")
        if n > MAX_PARAMETERS:
            raise MedtlError(f"the model config declares {n:,} parameters, more than {MAX_PARAMETERS:,}: not a "
                             "model medtl writes (a damaged or hostile checkpoint?)", "meta.model")
        return Model(build_encoder(config["encoder"]), build_head(config["head"]))
    except (KeyError, TypeError) as err:
        raise MedtlError(f"model config is incomplete or malformed: {err}", "meta.model") from None


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the model's own weights (``encoder.*`` and ``head.*``), not a strategy's extra state."""
    sd = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    sd.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_checkpoint(path: str | Path, model: nn.Module, **meta: Any) -> Path:
    """Write ``model`` (anything with ``encoder`` and ``head``: a Model or a Strategy) and ``meta``.

    Recognised meta keys (all optional): image_size, intensity, label_names, task, manifest_hash,
    metrics, seed; any other plain-valued key is stored as well.
    """
    config = model_config(model)
    enc_cfg = (config or {}).get("encoder", {})
    head_cfg = (config or {}).get("head", {})
    full = {
        "medtl_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": config,
        "architecture": enc_cfg.get("arch"),
        "in_channels": enc_cfg.get("in_channels"),
        "image_size": None,
        "intensity": None,
        "label_names": None,
        "task": head_cfg.get("task"),
        "manifest_hash": None,
        "metrics": {},
        "seed": None,
        **meta,
    }
    if isinstance(full["image_size"], int):
        full["image_size"] = [full["image_size"]] * int(enc_cfg.get("spatial_dims", 2))
    full["intensity"] = complete_intensity(full["intensity"])
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
               "state_dict": model_state_dict(model), "meta": plain(full, "meta")}
    path = Path(path)
    if _holds_the_same(path, payload):  # a finished run run again: its file, and so the model's version, stay
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomic(payload, path)


def _holds_the_same(path: Path, payload: dict[str, Any]) -> bool:
    """Whether ``path`` already holds these weights and this meta, but for when it was written (the file's hash
    is the model's version in medtl predict's results, which refuses to mix two versions in one folder)."""
    if not path.is_file():
        return False
    try:
        old = read_checkpoint(path)
    except MedtlError:
        return False
    new_sd, old_sd = payload["state_dict"], old["state_dict"]
    if new_sd.keys() != old_sd.keys() or not all(torch.equal(new_sd[k], old_sd[k]) for k in new_sd):
        return False
    when = ("created_utc",)
    return {k: v for k, v in old["meta"].items() if k not in when} == \
        {k: v for k, v in with_recorded_options(payload["meta"]).items() if k not in when}


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` into a temporary file, then renamed: a kill or a full disk leaves the previous file (or
    none), never half of one that a rerun would trip over; a failed write is an error naming the file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError "unexpected pos"
        tmp.unlink(missing_ok=True)
        why = "no space left on the device" if getattr(err, "errno", None) == 28 else \
            f"{type(err).__name__}: {str(err)[:120]}; a full disk fails this way"
        raise MedtlError(f"cannot write the file ({why}); the previous version, if any, is kept", path) from None
    return path


def update_checkpoint_meta(path: str | Path, **meta: Any) -> Path:
    """Add or replace ``meta`` keys of an existing checkpoint (weights untouched), atomically."""
    obj = read_checkpoint(path)
    obj["meta"] = plain({**obj["meta"], **meta}, "meta")
    return save_atomic(obj, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (validated); :class:`MedtlError` for anything else."""
    obj = read_file(path)
    if not is_checkpoint(obj):
        raise MedtlError("not a medtl checkpoint (no format='medtl-checkpoint'); for plain weights use load_weights",
                         path)
    if int(obj.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise MedtlError(f"checkpoint format {obj['format_version']} is newer than this medtl reads "
                         f"({CHECKPOINT_FORMAT_VERSION})", path)
    if not isinstance(obj.get("state_dict"), dict) or not isinstance(obj.get("meta"), dict):
        raise MedtlError("checkpoint lacks its state_dict or meta", path)
    return {**obj, "meta": with_recorded_options(obj["meta"])}


def complete_intensity(intensity):
    """A preprocessing record as written: every option of its preset, today's default where none was given (what
    the preset chain ran with). A record without an option is then one an older medtl wrote, which
    :func:`with_recorded_options` reads with that medtl's values."""
    if not isinstance(intensity, dict) or intensity.get("preset") not in DEFAULTS:
        return intensity
    return recorded_options(intensity, missing=DEFAULTS)


def with_recorded_options(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its ``intensity`` record complete: options an older medtl did not record take the values it
    used (``medtl.data.transforms.recorded_options``), so the model keeps the preprocessing it was trained with."""
    intensity = meta.get("intensity")
    if not isinstance(intensity, dict) or "preset" not in intensity:
        return meta
    try:
        return {**meta, "intensity": recorded_options(intensity)}
    except MedtlError:  # an unknown preset: left for the reader that needs it to refuse
        return meta


def trained_from(path: str | Path, meta: dict[str, Any]) -> list[tuple[Path, Path | None, list[str]]]:
    """The manifests a checkpoint's ``meta`` records it learned from: ``(as recorded, where it is now or None, the
    splits it read)``. Self-supervised runs record each manifest with its splits; the others read a train split.
    Paths recorded relative (by releases before 2026-12-02) were relative to where it trained; medtl train keeps
    its manifest beside the model, where it is looked for too."""
    parts = meta.get("ssl_data") or [{"manifest": m, "splits": ["train"]} for m in
                                     (meta["manifest"] if isinstance(meta.get("manifest"), list) else
                                      [meta.get("manifest")]) if m]
    out = []
    for part in parts:
        recorded = Path(part["manifest"])
        found = next((p for p in (recorded, Path(path).parent / recorded.name) if p.is_file()), None)
        out.append((recorded, found, list(part.get("splits") or ["train"])))
    return out


def encoder_config(path: str | Path) -> dict[str, Any]:
    """The encoder a checkpoint records (``arch``, ``spatial_dims``, ...), read without building it."""
    return dict((read_checkpoint(path)["meta"].get("model") or {}).get("encoder") or {})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Model, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strictly). Returns (model, meta)."""
    obj = read_checkpoint(path)
    meta = obj["meta"]
    if not meta.get("model"):
        raise MedtlError("checkpoint has no model config to rebuild from; load its weights into a model you build",
                         path)
    model = build_model(meta["model"])
    check_and_load(model, obj["state_dict"], where=str(path))
    return model.to(map_location).eval(), meta
