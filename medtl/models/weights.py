"""Loading weights from local files only, explicitly and loudly.

Sources understood (``source="auto"`` tells them apart by their key names):

==================  ===================================================================================
``medtl``           a medtl checkpoint (checkpoint.py); ``encoder.*`` keys go to the encoder
``resnet``          torchvision / timm ResNet state dicts (``conv1``, ``bn1``, ``layer1.0.conv1``,
                    ``fc``): the same names as medtl's ResNet encoders
``densenet``        torchvision / timm DenseNet (``features.denseblock1.denselayer1.norm1``, also the
                    legacy ``norm.1`` form): mapped to MONAI's ``denselayer1.layers.norm1``
``torchxrayvision`` TorchXRayVision DenseNet-121 (densenet names, 1 input channel, 18-output classifier,
                    ``op_threshs``). Its released ``.pt`` files pickle the whole model object, which
                    ``weights_only`` refuses: re-save once, where torchxrayvision is installed, with
                    ``torch.save(xrv.models.DenseNet(weights=...).state_dict(), "xrv.pt")``. It expects
                    224 px images scaled to [-1024, 1024].
``medicalnet``      MedicalNet 3D ResNets (``{"state_dict": {"module.conv1.weight": ...}}``, segmentation
                    head ``conv_seg``). ResNet-18/34 use type-A shortcuts: build the encoder with
                    ``spatial_dims=3, shortcut="A"``; ResNet-10/50 use ``shortcut="B"``. (MedicalNet
                    dilates layer3/4 instead of striding; the weights load, the strides stay medtl's.)
==================  ===================================================================================

Every file is read with ``torch.load(..., weights_only=True)``; a file that holds pickled code is
refused with a :class:`MedtlError` naming it. The source's own classifier (``fc``, ``classifier``,
``conv_seg``, ``op_threshs``) is dropped and listed in the report. Every other missing, unexpected or
shape-mismatched key is reported, and loading fails unless ``allow`` names it (glob patterns, e.g.
``["head.*"]`` for a new head).
"""

from __future__ import annotations

import fnmatch
import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.models.formats import TRAIN_STATE_FORMAT, is_checkpoint

log = logging.getLogger(__name__)

SOURCES = ("auto", "medtl", "resnet", "densenet", "torchxrayvision", "medicalnet")
# Classifier / segmentation heads of the source projects: never part of an encoder.
SOURCE_HEAD_KEYS = ("fc.*", "classifier.*", "conv_seg.*", "class_layers.*", "op_threshs")


@dataclass
class LoadReport:
    """What a load did: every key that did not simply match is listed."""

    where: str
    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # source head keys dropped on purpose
    allowed: list[str] = field(default_factory=list)  # differed, but the caller allowed them
    defaulted: list[str] = field(default_factory=list)  # BatchNorm counters absent from old files
    adapted: list[str] = field(default_factory=list)  # e.g. RGB stem summed to one channel

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int | None = 8) -> str:
        """One line; at most ``limit`` keys per kind (None: all of them)."""
        parts = [f"{self.where} ({self.source}): {self.loaded} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched", "allowed", "ignored", "defaulted", "adapted"):
            items = getattr(self, name)
            if items:
                n = len(items) if limit is None else limit
                shown = [f"{k[0]} {k[1]} vs model {k[2]}" if isinstance(k, tuple) else k for k in items[:n]]
                more = f" (+{len(items) - n} more)" if len(items) > n else ""
                parts.append(f"{name} {len(items)}: {', '.join(shown)}{more}")
        return "; ".join(parts)


# --- reading ---------------------------------------------------------------------------------------


def blocked(err: Exception) -> str:
    """What torch's ``weights_only`` loading refused, from its message: its first line alone says that loading
    with ``weights_only=False`` would likely succeed and cuts off before "it can result in arbitrary code
    execution"; the line that names the blocked global is the useful one."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch bolds its text
    # "Trying to load unsupported GLOBAL posix.system ..." or "Unsupported global: GLOBAL builtins.print"
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found:
        return f"it would import {found.group(1)}, which weights_only loading does not allow"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return (lines[0][:200] if lines else "weights_only loading refused it")


def read_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, every failure a :class:`MedtlError` naming the file."""
    if not isinstance(path, (str, Path)):
        raise MedtlError(f"give the weights file's path (a str or Path), got {type(path).__name__} {path!r:.60}", "path")
    path = Path(path)
    if not path.is_file():
        raise MedtlError("weights file not found", path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch.save: a zip, or a pickle (legacy)
        raise MedtlError("not a PyTorch weights file (torch.save writes a zip archive; this is not one: a text, "
                         "CSV or image file given as weights?)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise MedtlError(
            f"refused: the file holds pickled Python objects (possibly code), not plain weights ({blocked(err)}). "
            "Nothing in it was run. If it is a trusted whole-model file, re-save its state_dict() and load that",
            path,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as err:
        raise MedtlError(f"not a readable PyTorch weights file: {str(err)[:200]}", path) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """(state dict, "medtl" or "plain", medtl meta) from a loaded file; wrappers unwrapped."""
    if is_checkpoint(obj):
        return dict(obj["state_dict"]), "medtl", dict(obj.get("meta") or {})
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_STATE_FORMAT:
        return dict(obj["model"]), "medtl", {}
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in ("state_dict", "model_state_dict", "model", "net"):  # MedicalNet, Lightning, common scripts
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        desc = f"a {type(obj).__name__}"
        if isinstance(obj, Mapping):
            desc += f" with keys {list(obj)[:6]}"
        raise MedtlError(f"not a state dict (a mapping of names to tensors): found {desc}", where)
    # DataParallel / DDP prefix.
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    return sd, "plain", {}


def detect_source(sd: Mapping[str, torch.Tensor]) -> str:
    """Which project's naming a plain state dict follows."""
    keys = set(sd)
    if "features.conv0.weight" in keys or any(".denselayer" in k for k in keys):
        cls = sd.get("classifier.weight")
        conv0 = sd.get("features.conv0.weight")
        xrv = "op_threshs" in keys or (cls is not None and cls.shape[0] == 18 and conv0 is not None and conv0.shape[1] == 1)
        return "torchxrayvision" if xrv else "densenet"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        if sd["conv1.weight"].ndim == 5 or any(k.startswith("conv_seg.") for k in keys):
            return "medicalnet"
        return "resnet"
    return "unknown"


_LEGACY_DENSE = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.([12])\.(.+)$")
_DENSE_LAYERS = re.compile(r"(denselayer\d+)\.(?!layers\.)")


def map_keys(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Source names -> medtl encoder names."""
    if source in ("densenet", "torchxrayvision"):
        out = {}
        for k, v in sd.items():
            k = _LEGACY_DENSE.sub(r"\1.\2\3.\4", k)  # old torchvision files: norm.1 -> norm1
            out[_DENSE_LAYERS.sub(r"\1.layers.", k)] = v  # MONAI nests a dense layer's modules in .layers
        return out
    return dict(sd)


# --- matching and loading --------------------------------------------------------------------------


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _stem_key(target: nn.Module) -> str | None:
    if hasattr(target, "encoder") and hasattr(target, "head"):
        inner = _stem_key(target.encoder)
        return None if inner is None else f"encoder.{inner}"
    if hasattr(target, "stem_key"):
        return target.stem_key
    if hasattr(target, "encoder"):  # 2.5D wrapper
        inner = _stem_key(target.encoder)
        return None if inner is None else f"encoder.{inner}"
    return None


def check_and_load(
    target: nn.Module,
    source_sd: Mapping[str, torch.Tensor],
    *,
    allow: Iterable[str] = (),
    where: str = "weights",
    source: str = "medtl",
    ignored: list[str] | None = None,
    adapt_channels: str | None = None,
) -> LoadReport:
    """Compare ``source_sd`` with ``target``'s state dict, fail loudly, else load the matching tensors."""
    allow = list(allow)
    report = LoadReport(where=where, source=source, ignored=list(ignored or []))
    target_sd = target.state_dict()
    src = dict(source_sd)

    stem = _stem_key(target)
    if stem and stem in src and stem in target_sd:
        s, t = src[stem].shape, target_sd[stem].shape
        if len(s) == len(t) and s[1] != t[1]:
            if adapt_channels in ("sum", "mean") and t[1] == 1:
                # Grey image x through an RGB kernel = sum over the RGB kernels (x fed to every channel).
                w = src[stem].sum(1, keepdim=True)
                src[stem] = w / s[1] if adapt_channels == "mean" else w
                report.adapted.append(f"{stem}: {s[1]} input channels -> 1 ({adapt_channels})")
            else:
                raise MedtlError(
                    f"the weights expect {s[1]}-channel images but the model takes {t[1]} channel(s) ({stem} is "
                    f"{tuple(s)}, model {tuple(t)}); "
                    + ("for RGB weights on grey images pass adapt_channels='sum'" if t[1] == 1 else
                       "grey weights do not adapt to an RGB model: build the model with in_channels=1"),
                    where,
                )

    dims = {(src[k].ndim, target_sd[k].ndim) for k in src.keys() & target_sd.keys() if k.endswith("weight")}
    if (4, 5) in dims:
        raise MedtlError(
            "2D weights cannot load into a 3D (inflated) encoder: load them into the 2D encoder, then lift it "
            "(medtl.models.lift: i3d, acs or 2.5d)",
            where,
        )
    if (5, 4) in dims:
        raise MedtlError("3D weights (e.g. MedicalNet) need a 3D encoder: build it with spatial_dims=3", where)

    loadable = {}
    for k, v in src.items():
        if k not in target_sd:
            (report.allowed if _matches(k, allow) else report.unexpected).append(k)
        elif v.shape != target_sd[k].shape:
            if _matches(k, allow):
                report.allowed.append(k)
            else:
                report.mismatched.append((k, tuple(v.shape), tuple(target_sd[k].shape)))
        else:
            loadable[k] = v
    for k in target_sd:
        if k in src:
            continue
        if k.endswith("num_batches_tracked"):
            report.defaulted.append(k)
        elif _matches(k, allow):
            report.allowed.append(k)
        else:
            report.missing.append(k)

    if not report.ok:
        hint = ""
        differing = report.missing + report.unexpected
        if differing and all(k.startswith("downsample") or ".downsample." in k for k in differing):
            hint = " (shortcut type differs: MedicalNet ResNet-18/34 need shortcut='A')"
        log.warning("weights do not fit the model: %s", report.summary(limit=None))  # every key, not a sample
        err = MedtlError(
            f"weights do not fit the model{hint}: {report.summary()}. Pass allow=[patterns] to accept keys that "
            "may differ (e.g. 'head.*' for a new head)",
            where,
        )
        err.report = report  # the full lists, for callers that want them
        raise err
    target.load_state_dict(loadable, strict=False)
    report.loaded = len(loadable)
    log.info("loaded %s", report.summary())
    return report


def load_weights(
    target: nn.Module,
    path: str | Path,
    *,
    source: str = "auto",
    allow: Iterable[str] = (),
    adapt_channels: str | None = None,
) -> LoadReport:
    """Load a local weights file into an encoder (or into a model with ``encoder`` and ``head``).

    For a lifted encoder: ACS reuses 2D weights as they are; I3D needs them loaded into the 2D
    encoder first (then :func:`medtl.models.lift.lift`); a 2.5D encoder loads them into its 2D encoder.
    """
    if source not in SOURCES:
        raise MedtlError(f"unknown weights source {source!r}; known: {', '.join(SOURCES)}", "source")
    if adapt_channels not in (None, "sum", "mean"):
        raise MedtlError(f"adapt_channels must be None, 'sum' or 'mean', got {adapt_channels!r}", "adapt_channels")
    where = str(path)
    sd, kind, meta = extract_state_dict(read_file(path), where)
    full_model = hasattr(target, "encoder") and hasattr(target, "head")
    ignored: list[str] = []
    if kind == "medtl" or source == "medtl":
        fmt = "medtl"
        if not full_model:
            ignored = [k for k in sd if not k.startswith("encoder.")]
            sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
            if not sd:
                raise MedtlError("the medtl checkpoint holds no encoder.* weights", where)
    else:
        fmt = detect_source(sd) if source == "auto" else source
        if fmt == "unknown":
            raise MedtlError(
                f"cannot tell which project's names these weights use (first keys {list(sd)[:4]}); "
                "pass source='resnet', 'densenet', 'torchxrayvision' or 'medicalnet'",
                where,
            )
        ignored = [k for k in sd if _matches(k, SOURCE_HEAD_KEYS)]
        sd = map_keys({k: v for k, v in sd.items() if k not in ignored}, fmt)
        if full_model:
            sd = {f"encoder.{k}": v for k, v in sd.items()}
    # A 2.5D encoder given 2D weights: they belong to its slice encoder (in a full model, model.encoder.encoder).
    if not full_model and hasattr(target, "slice_features") and not any(k.startswith("encoder.") for k in sd):
        target = target.encoder
    elif (full_model and hasattr(getattr(target, "encoder", None), "slice_features")
          and not any(k.startswith("encoder.encoder.") for k in sd)):
        sd = {f"encoder.{k}" if k.startswith("encoder.") else k: v for k, v in sd.items()}
    return check_and_load(target, sd, allow=allow, where=where, source=fmt, ignored=ignored,
                          adapt_channels=adapt_channels)
