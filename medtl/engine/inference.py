"""The one inference core: a model run over batches without gradients.

Every "run the model over a loader" in medtl is :func:`run_model` (or, for one batch already placed,
:func:`forward_batch`): validation and predictions (:mod:`medtl.engine.evaluate`), the frozen-encoder
feature cache, the similarity features, label-free checkpoint selection and ``medtl predict``. It owns

- the precision policy (:func:`precision_dtype`, recorded in checkpoints as meta ``precision``);
- eval mode and no gradients (every module's mode is restored exactly afterwards);
- device moves (the model for the pass and back, the batch's tensors) and channels-last memory;
- which outputs are kept (``OUTPUTS``), as float32 CPU tensors, one per batch, in loader order.

What each output means for the model::

    ("features",)                      model is an encoder: model(x) -> (B, F)
    ("features", "logits"/"probs")     model has .encoder and .head: f = encoder(x), logits = head(f)
    ("loss", "logits"?)                the validation step: model.validation_step(batch), or model(x)
                                       and the head's task loss when the batch has labels
    ("logits"/"probs")                 model(x)

``probs`` is the softmax of the logits (computed on the device, as the model's own step would).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medtl.errors import MedtlError

PRECISIONS = ("auto", "off", "bf16", "fp16")
OUTPUTS = ("features", "logits", "probs", "loss")


def precision_dtype(policy: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a precision policy on ``device`` (None: plain fp32).

    The one policy: a checkpoint records it (meta ``precision``) and training, evaluation and
    ``medtl predict`` all resolve it here, so the deployed model computes as the evaluated one did.
    "auto" is bf16 on CUDA (fp16 where bf16 is missing) and fp32 on a CPU. bf16 on a CPU with native
    bf16 (AVX512-BF16 or AMX) trains about 1.45x faster per step on a quiet machine, but beside other
    CPU-bound work it loses far more of its speed (``medtl demo`` beside two busy processes: 3.9x its
    quiet time in bf16, 1.8x in fp32), and its sums depend on the thread order (two runs differ in the
    last bits); so it is asked for (``bf16``), not the default (docs/performance.md). Autocast runs in
    channels-last memory (:func:`uses_channels_last`).
    """
    if policy not in PRECISIONS:
        raise MedtlError(f"unknown precision {policy!r}; use one of {', '.join(PRECISIONS)}", "precision")
    device = torch.device(device)
    if policy == "off" or (policy == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        return torch.float16 if policy == "fp16" else torch.bfloat16
    if policy == "fp16" or (policy == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def uses_channels_last(amp_dtype: torch.dtype | None) -> bool:
    """Channels-last memory goes with autocast: the reduced-precision convolution kernels want it."""
    return amp_dtype is not None


def to_channels_last(module: nn.Module) -> list[nn.Parameter]:
    """Channels-last memory for every 4D and 5D weight, whatever the input's rank (a 2.5D or ACS encoder
    keeps 2D kernels inside a 3D model); returns the parameters changed."""
    changed = []
    for p in module.parameters():
        fmt = torch.channels_last if p.dim() == 4 else torch.channels_last_3d if p.dim() == 5 else None
        if fmt is None or not p.is_contiguous():
            continue
        # Explicit channels-last strides, also where the shape leaves the layout ambiguous (one input
        # channel, 1x1 kernels): ``contiguous(memory_format=...)`` keeps those as they are, and the
        # convolution then picks the slow plain layout (a 2D ResNet-10 step in bf16: 169 vs 106 ms).
        target = torch.empty_like(p.data, memory_format=fmt)
        if target.stride() != p.data.stride():
            p.data = target.copy_(p.data)
            changed.append(p)
    return changed


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """A 4D / 5D image batch in channels-last memory (other tensors unchanged)."""
    if x.ndim not in (4, 5):
        return x
    return x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device`` (MONAI MetaTensors as plain tensors: the model needs no metadata)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.as_tensor() if hasattr(v, "as_tensor") else v
            v = v.to(device, non_blocking=True)
        out[k] = v
    return out


def validation_step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(loss, logits)`` of one batch: the model's own ``validation_step``, else its output and the head's
    task loss (loss None without labels)."""
    from medtl.models.heads import task_loss

    if hasattr(model, "validation_step"):
        return model.validation_step(batch)
    logits = model(batch["image"])
    if "label" not in batch:
        return None, logits
    head = getattr(model, "head", None)
    loss = head.loss(logits, batch["label"]) if hasattr(head, "loss") else task_loss(logits, batch["label"])
    return loss, logits


def forward_batch(model: nn.Module, batch: dict[str, Any], outputs: Sequence[str] = ("logits",),
                  device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                  channels_last: bool | None = None) -> dict[str, Any]:
    """The requested ``outputs`` of one batch (see the module docstring), on the CPU as float32, and the
    batch size ``n``; ``loss`` is the batch's mean loss as a float (None without one). The model must
    already be on ``device`` and in eval mode; call under ``torch.no_grad()`` (``run_model`` does both)."""
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise MedtlError(f"unknown inference output(s) {sorted(unknown)}; known: {list(OUTPUTS)}", "outputs")
    device = torch.device(device)
    batch = to_device(batch, device)
    x = batch["image"]
    if not x.is_floating_point() or x.dtype == torch.float64:
        x = x.float()  # integer pixels or float64 arrays: the models compute in float32
    if uses_channels_last(amp_dtype) if channels_last is None else channels_last:
        x = channels_last_input(x)
    batch["image"] = x
    wants_logits = "logits" in outputs or "probs" in outputs
    f = logits = loss = None
    with autocast(device, amp_dtype):
        if "loss" in outputs:
            loss, logits = validation_step(model, batch)
        elif "features" in outputs and wants_logits:
            f = model.encoder(x)
            logits = model.head(f)
        elif "features" in outputs:
            f = model(x)
        else:
            logits = model(x)
    out: dict[str, Any] = {"n": int(x.shape[0])}
    if "features" in outputs:
        if f.ndim != 2:
            raise MedtlError(f"the encoder gave outputs of shape {tuple(f.shape)}; expected (B, F)", "encoder")
        out["features"] = f.float().cpu()
    if "loss" in outputs:
        out["loss"] = None if loss is None else float(loss)
    if logits is not None and "logits" in outputs:
        out["logits"] = logits.float().cpu()
    if logits is not None and "probs" in outputs:
        if logits.ndim != 2:
            raise MedtlError(f"the model gave outputs of shape {tuple(logits.shape)}; expected (B, K)", "model")
        out["probs"] = logits.float().softmax(1).cpu()
    return out


@dataclass
class Outputs:
    """One pass's outputs in loader order, one CPU tensor per batch (``cat`` joins them).

    ``labels`` and the string ``fields`` (``case_id``, ``patient_id``, ``domain``, ...) come from the
    batches that carry them; ``loss_terms`` are each batch's mean loss times its size, in batch order.
    """

    features: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)
    loss_terms: list[float] = field(default_factory=list)
    n_loss: int = 0
    n_batches: int = 0

    def add(self, batch: dict[str, Any], result: dict[str, Any]) -> None:
        self.n_batches += 1
        for name in ("features", "logits", "probs"):
            if name in result:
                getattr(self, name).append(result[name])
        if result.get("loss") is not None:
            self.loss_terms.append(result["loss"] * result["n"])
            self.n_loss += result["n"]
        if "label" in batch:
            label = torch.as_tensor(batch["label"])
            self.labels.append((label.as_tensor() if hasattr(label, "as_tensor") else label).cpu())
        for k, v in batch.items():
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
                self.fields.setdefault(k, []).extend(v)

    def cat(self, name: str) -> torch.Tensor | None:
        """``features`` / ``logits`` / ``probs`` / ``labels`` of every batch joined; None unless every batch gave it."""
        parts = getattr(self, name)
        return torch.cat(parts) if parts and len(parts) == self.n_batches else None


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the pass; afterwards every submodule's own mode again (a frozen part stays in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _placed(model: nn.Module, device: torch.device, channels_last: bool):
    """``model`` on ``device`` (channels-last weights if asked) for the pass, then back where it was."""
    params = list(model.parameters())
    home = params[0].device if params else device
    model.to(device)
    changed = to_channels_last(model) if channels_last else []
    try:
        yield
    finally:
        for p in changed:
            p.data = p.data.clone(memory_format=torch.contiguous_format)
        model.to(home)


@torch.no_grad()
def run_model(model: nn.Module, batches: Iterable[dict[str, Any]], outputs: Sequence[str] = ("logits",), *,
              device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
              channels_last: bool | None = None, progress: bool = False, desc: str = "infer") -> Outputs:
    """Run ``model`` over ``batches`` (a loader, or any iterable of ``{"image", "label"?, ...}`` dicts) in
    eval mode without gradients, under autocast to ``amp_dtype`` (see :func:`precision_dtype`), on
    ``device``; keep ``outputs`` (see the module docstring). ``channels_last``: channels-last memory for
    4D/5D inputs and weights (the weights are restored afterwards); None: with autocast, as the precision
    policy has it (:func:`uses_channels_last`)."""
    from medtl.progress import bar

    device = torch.device(device)
    channels_last = uses_channels_last(amp_dtype) if channels_last is None else channels_last
    out = Outputs()
    with _eval_mode(model), _placed(model, device, channels_last):
        for batch in bar(batches, desc=desc, leave=False, enabled=progress):
            if not isinstance(batch, dict) or "image" not in batch:
                raise MedtlError("inference needs batches of dicts with an 'image'", "data")
            out.add(batch, forward_batch(model, batch, outputs, device, amp_dtype, channels_last))
    return out


__all__ = ["OUTPUTS", "PRECISIONS", "Outputs", "autocast", "channels_last_input", "forward_batch",
           "precision_dtype", "run_model", "to_channels_last", "uses_channels_last",
           "to_device", "validation_step"]
