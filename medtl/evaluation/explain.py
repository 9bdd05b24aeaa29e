"""Grad-CAM explanations (MONAI's ``monai.visualize.GradCAM``), PNG overlays and a faithfulness test.

Maps are scaled so that 1 marks the strongest evidence for the explained class and 0 the weakest.
(MONAI's default ``postprocessing`` maps (min, max) to (1, 0), which inverts the map; we pass a
plain min-max scaling instead.) 2D images get one overlay; 3D volumes get three orthogonal slices
through the voxel where the map peaks (labelled sagittal / coronal / axial for RAS-oriented volumes,
MONAI's (x, y, z) axis order). The PNGs can be passed to the report (``gradcam=[...]``), which embeds
them; so can the JSON written by ``save_deletion_test``, whose numbers the report prints next to them.

``deletion_test`` says whether a map points at what the model uses: it blanks the hottest pixels or
voxels of each image's map and, as a control, as many at random, and compares the drops in the
explained class's probability over a set of images, with a confidence interval.
"""

from __future__ import annotations

import math
import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from medtl.data.manifest import NEAR_COPY_GROUP
from medtl.errors import MedtlError
from medtl.evaluation.figures import colormap, subplots, to_png

__all__ = ["choose_layer", "coarse", "deletion_summary", "deletion_test", "deletion_verdict", "small_test_note", "gradcam", "load_deletion_test", "minmax", "overlay_png",
           "save_deletion_test", "save_gradcam"]

DELETION_KIND = "medtl.gradcam_deletion_test"  # marks a JSON file as save_deletion_test output


def minmax(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch ``(B, 1, *spatial)`` to [0, 1], max -> 1; a constant map becomes all 0."""
    flat = cam.detach().flatten(1)
    shape = (-1,) + (1,) * (cam.ndim - 1)
    lo, hi = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    span = hi - lo
    # A constant map (e.g. ReLU removed everything, or a 1x1 grid upsampled) carries no location: all zero,
    # not all hot. Upsampling a single cell leaves float rounding, which scaling would blow up to 0-1 specks.
    flat_enough = span <= 1e-5 * torch.maximum(hi.abs(), lo.abs()).clamp_min(torch.finfo(cam.dtype).tiny)
    return torch.where(~flat_enough, (cam.detach() - lo) / span.clamp_min(torch.finfo(cam.dtype).tiny),
                       torch.zeros_like(cam))  # fmt: skip


def _spatial_dims(model: nn.Module) -> int:
    """2 for images, 3 for volumes: what the encoder says it reads (a 2D encoder lifted to 3D reads volumes),
    else the kind of its first convolution."""
    for m in (getattr(model, "encoder", None), model):
        if getattr(m, "spatial_dims", None) in (2, 3):
            return int(m.spatial_dims)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return 2 if isinstance(m, nn.Conv2d) else 3
    raise MedtlError("the model has no 2D or 3D convolution to explain", "model")


class SlicedEncoder(Protocol):
    """What Grad-CAM needs of a 2.5D encoder (``medtl.models.lift.SliceEncoder`` is one): a 2D ``encoder`` run
    on the slices of a volume along ``slice_axis`` (0, 1 or 2 of its spatial axes), the slices as its batch.
    Declared here, not imported, because evaluation sits below medtl.models (docs/architecture.md)."""

    encoder: nn.Module
    slice_axis: int

    def slice_features(self, x: torch.Tensor) -> torch.Tensor: ...


SLICED_ENCODER_MEMBERS = ("encoder", "slice_axis", "slice_features")


def is_sliced_encoder(module: nn.Module) -> bool:
    """Whether ``module`` meets :class:`SlicedEncoder`. By ``hasattr``, not ``isinstance``: from Python 3.12 a
    runtime protocol looks attributes up statically and misses a submodule (``encoder`` lives in ``_modules``)."""
    return all(hasattr(module, name) for name in SLICED_ENCODER_MEMBERS)


def _slice_encoder(model: nn.Module) -> SlicedEncoder | None:
    """The 2.5D encoder of a model, or None."""
    return next((m for m in model.modules() if is_sliced_encoder(m)), None)


def _as_volume(per_slice: torch.Tensor, encoder) -> torch.Tensor:
    """A 2.5D stage's output for one volume, ``(S, K, h, w)`` (its 2D encoder sees the S slices as a batch), as
    one 3D map ``(1, K, *grid)`` with the slices back on the volume's slice axis."""
    return per_slice.movedim(0, 1)[None].movedim(2, 2 + encoder.slice_axis)


def _grid(model: nn.Module, output: torch.Tensor) -> tuple:
    """The spatial grid of a stage's output for one input (a 2.5D stage's slices make its third axis)."""
    encoder = _slice_encoder(model)
    if encoder is not None and output.ndim == 4:
        return tuple(_as_volume(output, encoder).shape[2:])
    return tuple(output.shape[2:])


def _batch_of_one(image, dims: int, what: str = "image") -> torch.Tensor:
    x = torch.as_tensor(image.detach() if torch.is_tensor(image) else np.asarray(image), dtype=torch.float32)
    if x.ndim == dims + 1:
        x = x[None]
    if x.ndim != dims + 2 or x.shape[0] != 1:
        raise MedtlError(f"expected one {dims}D image (C, *spatial), got shape {tuple(x.shape)}", what)
    return x


@contextmanager
def _explaining(model: nn.Module, target_layer: str):
    """The model in eval mode for the block, yielding ``target_layer``'s module; on exit the hooks added to it,
    the mode and the caller's gradients are as they were.

    MONAI registers its forward/backward hooks without keeping the handles, so every call would
    leave two more hooks on the caller's model; we remove the ones that were not there before.
    """
    names = dict(model.named_modules())
    if target_layer not in names:
        raise MedtlError(f"no layer {target_layer!r} in the model (e.g. {', '.join(list(names)[1:6])} ...)",
                         "target_layer")  # fmt: skip
    layer = names[target_layer]
    before = {id(d): set(d) for d in (layer._forward_hooks, layer._backward_hooks)}
    grads = [(p, p.grad) for p in model.parameters()]  # the caller's gradients, which the backward pass adds to
    was_training = model.training
    model.eval()  # batch statistics of one image would be meaningless
    try:
        yield layer
    finally:
        for hooks in (layer._forward_hooks, layer._backward_hooks):
            for key in [k for k in hooks if k not in before[id(hooks)]]:
                del hooks[key]
        for p, g in grads:
            p.grad = g
        model.train(was_training)


def _check_class_idx(class_idx) -> None:
    """``class_idx`` is None or a non-negative int (its upper bound is the model's, checked by :func:`_class_of`)."""
    if class_idx is None:
        return
    if isinstance(class_idx, bool) or not isinstance(class_idx, (int, np.integer)):
        raise MedtlError(f"must be the index of one of the model's outputs (an int), got {class_idx!r}; a model "
                         "knows no class names: its checkpoint's meta['label_names'].index(name) gives the index",
                         "class_idx")
    if class_idx < 0:
        raise MedtlError(f"class {class_idx} is not an output index (0 or more)", "class_idx")


def _class_of(logits: torch.Tensor, class_idx) -> int:
    """The class explained: ``class_idx`` (checked against the model's outputs), else the predicted one."""
    _check_class_idx(class_idx)
    n = logits.shape[1]
    if class_idx is None:
        return int(logits[0].argmax())
    if class_idx >= n:
        raise MedtlError(f"class {class_idx} is not one of the model's {n} outputs (0..{n - 1})", "class_idx")
    return int(class_idx)


def _monai_cam(model: nn.Module, x: torch.Tensor, target_layer: str, class_idx) -> np.ndarray:
    from monai.visualize import GradCAM  # lazy: only explanations need it

    _check_class_idx(class_idx)  # None: MONAI explains the predicted class, from the one forward pass it runs
    # requires_grad on the input: the target layer then gets gradients even when its weights are
    # frozen (a linear-probe model), which MONAI's backward hook needs.
    cam = GradCAM(nn_module=model, target_layers=target_layer, postprocessing=minmax)
    try:
        return cam(x.clone().requires_grad_(True), class_idx=class_idx)[0, 0].detach().cpu().numpy()
    except IndexError:  # class_idx past the model's outputs: say so with their count
        with torch.no_grad():
            _class_of(model(x), class_idx)
        raise


def _slice_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target_layer: str, class_idx) -> np.ndarray:
    """Grad-CAM of a 2.5D model: its 2D stage's per-slice activations and gradients stacked into one map of the
    volume (:func:`_as_volume`), channel weights averaged over all of it, as for a 3D stage."""
    encoder = _slice_encoder(model)
    if not any(m is layer for m in encoder.encoder.modules()):
        inner = next(n for n, m in model.named_modules() if m is encoder.encoder)
        raise MedtlError(f"{target_layer} is not a stage of the 2.5D model's 2D encoder (its stages: {inner}.layer1 "
                         f"... {inner}.layer4)", "target_layer")
    store: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        store["A"] = output
        output.register_hook(lambda g: store.__setitem__("G", g))

    hook = layer.register_forward_hook(keep)
    try:
        logits = model(x.clone().requires_grad_(True))  # the input's grad: frozen weights still give gradients
        logits[0, _class_of(logits, class_idx)].backward()
    finally:
        hook.remove()
    acts, grads = _as_volume(store["A"].detach(), encoder), _as_volume(store["G"], encoder)
    cam = torch.relu((grads.mean(dim=(2, 3, 4), keepdim=True) * acts).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
    return minmax(cam)[0, 0].cpu().numpy()


def gradcam(model: nn.Module, image, target_layer: str, class_idx: int | None = None) -> np.ndarray:
    """Grad-CAM map of one image ``(C, *spatial)`` (or ``(1, C, *spatial)``), upsampled to the image.

    In [0, 1], 1 where the evidence for the class is strongest (ReLU(sum_k mean(dy/dA_k) A_k) on the
    layer's grid, linearly upsampled, min-max scaled; all 0 when the layer holds no positive evidence).
    ``class_idx`` is the class explained (default: the predicted one). The model is run in eval mode
    and restored to its previous mode; no hooks are left on it.
    """
    x = _batch_of_one(image, _spatial_dims(model)).to(next(model.parameters()).device)
    with _explaining(model, target_layer) as layer:
        if _slice_encoder(model) is not None:
            return _slice_cam(model, x, layer, target_layer, class_idx)
        return _monai_cam(model, x, target_layer, class_idx)


# ----------------------------------------------------------------------------- faithfulness


def _image_of(item):
    # Dataset items are dicts with an "image"; anything else is the image itself.
    return item["image"] if isinstance(item, dict) else item


def _mean_ci(v: np.ndarray, level: float, n_boot: int, rng: np.random.Generator, unit: np.ndarray) -> dict:
    """Mean over images with a percentile-bootstrap interval that draws units (``unit``: codes 0..U-1 per image;
    a patient's images, or near-copies, are one unit), each bringing all its images."""
    sums, counts = np.bincount(unit, weights=v), np.bincount(unit)
    draws = rng.integers(0, len(counts), (n_boot, len(counts)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    a = (1 - level) / 2
    return {"mean": float(v.mean()), "ci": [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]}


def _t_ci(v: np.ndarray, level: float, unit: np.ndarray) -> list[float]:
    """A t interval of the mean over images whose units (codes 0..U-1) are resampled together: the ratio
    estimator's cluster-robust standard error, U - 1 degrees of freedom. With one image per unit it is the
    paired t interval of the images."""
    from scipy import stats

    sums, counts = np.bincount(unit, weights=v), np.bincount(unit)
    u, mean = len(counts), v.mean()
    se = np.sqrt(u / (u - 1) * np.sum((sums - mean * counts) ** 2)) / counts.sum()
    half = stats.t.ppf(0.5 + level / 2, u - 1) * se
    return [float(mean - half), float(mean + half)]


def deletion_test(
    model: nn.Module,
    images: Iterable,
    target_layer: str | None = None,
    *,
    class_idx: int | Sequence[int] | None = None,
    fraction: float = 0.2,
    fill: str | float = "mean",
    control: str = "pixels",
    n_random: int = 5,
    explain: Callable[[torch.Tensor, int], np.ndarray] | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Sequence | str | None = "auto",
) -> dict:
    """Faithfulness of Grad-CAM maps: does blanking the map's hottest region hurt the model most?

    For each image, the explained class ``c`` (``class_idx``: one class for all, or one per image as an
    overlay explained it; default the class with the highest probability) has
    probability ``p``. The top ``fraction`` of the image's pixels/voxels by map value (ties in random
    order) are set to ``fill`` (``"mean"``: the image's per-channel mean, which is 0 for medtl's
    z-scored inputs; or a number) and ``p_top`` is measured; as a control, ``n_random`` masks of the
    same size are blanked and their ``p`` averaged (``p_random``). ``control="pixels"`` draws the
    control's pixels at random; ``"shifted"`` moves the top mask to a random place (circularly), so
    the control has the map mask's shape and only its place differs.

    Returns a JSON-able dict: ``drop_top`` = mean of ``p - p_top``, ``drop_random`` = mean of
    ``p - p_random``, ``difference`` = mean of their per-image difference (paired), each with a
    ``level`` percentile-bootstrap interval (``difference`` also with a paired t interval, ``ci_t``).
    Images are not independent when one patient gives several, or one scan is in the set twice (near-copies):
    the intervals resample units, each bringing all its images, and the t interval's standard error is over
    units (cluster-robust; the paired t interval when each image is its own unit).
    ``groups``: one unit label per image; ``"auto"`` (default) takes dataset items' ``patient_id`` and
    ``near_copy_group`` (a patient's images are one unit, and so are the patients of a near-copy group),
    else each image is its own unit; None makes every image its own. ``top_larger``: the share of images whose top drop beats the control's;
    ``per_image`` lists; ``verdict`` (:func:`deletion_verdict`) and ``constant_maps`` (maps with no
    location, blanked at random). A map that marks the evidence gives a difference clearly above 0; one
    that points elsewhere (or away from the evidence, as an inverted map does) gives 0 or less. This is
    one point (``fraction``) of the deletion curve of Petsiuk et al. 2018 (RISE), with a random mask of the
    same size as the reference. ``explain(x, c) -> map`` tests another map (``x`` is
    ``(1, C, *spatial)``); by default it is :func:`gradcam` on ``target_layer``.

    ``images``: arrays or tensors ``(C, *spatial)``, or dataset items with an ``"image"``; use at
    least 50 held-out images for a number worth reporting.
    """
    if not 0 < fraction < 1:
        raise MedtlError(f"fraction must lie between 0 and 1, got {fraction}", "fraction")
    if control not in ("pixels", "shifted"):
        raise MedtlError(f"unknown control {control!r}: use 'pixels' or 'shifted'", "control")
    if not (fill == "mean" or isinstance(fill, (int, float)) and not isinstance(fill, bool)):
        raise MedtlError(f"fill must be 'mean' or a number, got {fill!r}", "fill")
    if int(n_random) < 1:
        raise MedtlError(f"n_random must be at least 1, got {n_random}", "n_random")
    if not 0 < level < 1:
        raise MedtlError(f"level must lie between 0 and 1, got {level}", "level")
    if int(n_boot) < 1:
        raise MedtlError(f"n_boot must be at least 1, got {n_boot}", "n_boot")
    if explain is None and target_layer is None:
        raise MedtlError("give the target_layer to explain (or an explain function)", "target_layer")
    if isinstance(groups, str) and groups != "auto":
        raise MedtlError(f"groups must be 'auto', None or one label per image, got {groups!r}", "groups")
    dims = _spatial_dims(model)
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"class": [], "p": [], "drop_top": [], "drop_random": [], "constant": []}
    patients, copies = [], []  # for groups="auto"
    was_training = model.training
    with _eval(model):
        explain_fn = explain or (lambda x, c: gradcam(model, x, target_layer, c))
        for i, item in enumerate(images):
            x = _batch_of_one(_image_of(item), dims, f"images[{i}]").to(device)
            patients.append(item.get("patient_id") if isinstance(item, dict) else None)
            copies.append(item.get(NEAR_COPY_GROUP) if isinstance(item, dict) else None)
            with torch.no_grad():
                probs = torch.softmax(model(x).float(), 1)[0]
            chosen = class_idx[i] if isinstance(class_idx, Sequence) else class_idx
            c = int(probs.argmax()) if chosen is None else int(chosen)
            if not 0 <= c < len(probs):
                raise MedtlError(f"class {c} is not one of the model's {len(probs)} classes", "class_idx")
            m = np.asarray(explain_fn(x, c), dtype=float)
            rows["constant"].append(bool(m.max() == m.min()))
            spatial = tuple(x.shape[2:])
            if m.shape != spatial:
                raise MedtlError(f"map shape {m.shape} differs from image {spatial}", f"images[{i}]")
            n_px = m.size
            k = max(1, int(round(fraction * n_px)))
            top = np.zeros(n_px, bool)
            top[np.lexsort((rng.random(n_px), -m.ravel()))[:k]] = True  # hottest first, ties shuffled
            masks = [top.reshape(spatial)]
            for _ in range(int(n_random)):
                if control == "pixels":
                    r = np.zeros(n_px, bool)
                    r[rng.choice(n_px, k, replace=False)] = True
                    masks.append(r.reshape(spatial))
                else:
                    masks.append(np.roll(masks[0], [int(rng.integers(s)) for s in spatial], tuple(range(dims))))
            mask = torch.as_tensor(np.stack(masks)[:, None], device=device)  # (1 + n_random, 1, *spatial)
            value = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True) if fill == "mean" else float(fill)
            blanked = torch.where(mask, value, x)  # broadcasts over the batch of masks and the channels
            with torch.no_grad():
                p_after = torch.softmax(model(blanked).float(), 1)[:, c].cpu().numpy()
            p = float(probs[c])
            rows["class"].append(c)
            rows["p"].append(p)
            rows["drop_top"].append(p - float(p_after[0]))
            rows["drop_random"].append(p - float(p_after[1:].mean()))
    model.train(was_training)
    n = len(rows["p"])
    if n < 2:
        raise MedtlError(f"the deletion test needs at least 2 images, got {n}", "images")
    if all(rows["constant"]):  # random against random: there is no map to test
        raise MedtlError("every map is constant (no positive evidence on the layer's grid, or a grid too coarse to "
                         "place any): nothing to test; explain a shallower layer", "target_layer")
    top_d, rand_d = np.array(rows["drop_top"]), np.array(rows["drop_random"])
    diff = top_d - rand_d
    unit = _units_of(groups, patients, copies, n)
    n_units = int(unit.max()) + 1
    if n_units < 2:  # one unit resampled is the same images every time: an interval of width 0, not evidence
        raise MedtlError(f"the {n} images are one unit (one patient, series or near-copy group): the deletion test "
                         "needs images of at least 2, as its interval resamples units", "images")
    boot = np.random.default_rng(seed + 1)
    difference = {**_mean_ci(diff, level, n_boot, boot, unit), "ci_t": _t_ci(diff, level, unit)}
    drop_top = _mean_ci(top_d, level, n_boot, boot, unit)
    over = "images" if n_units == n else f"{n_units} units of the {n} images (a patient, series or near-copy group each)"
    return {
        "kind": DELETION_KIND,
        "n": n,
        "fraction": float(fraction),
        "fill": fill,
        "control": control,
        "n_random": int(n_random),
        "class_idx": ("predicted" if class_idx is None else
                      "per image" if isinstance(class_idx, Sequence) else int(class_idx)),
        "target_layer": target_layer if explain is None else "custom explain function",
        "level": float(level),
        "n_units": n_units,
        "ci_method": f"percentile bootstrap over {over} ({n_boot} resamples, seed {seed + 1})",
        "seed": int(seed),
        "p_mean": float(np.mean(rows["p"])),
        "drop_top": drop_top,
        "drop_random": _mean_ci(rand_d, level, n_boot, boot, unit),
        "difference": difference,
        "verdict": deletion_verdict(difference, drop_top),
        "constant_maps": int(sum(rows["constant"])),
        "top_larger": float(np.mean(diff > 0)),
        "per_image": rows,
    }


def _units_of(groups, patients: list, copies: list, n: int) -> np.ndarray:
    """Codes 0..U-1 of each image's resampling unit (see :func:`deletion_test`'s ``groups``), in the order of
    their first images, so images that are each their own unit draw as the unit-free bootstrap did."""
    from medtl.evaluation.bootstrap import sampling_units

    if groups is None:
        labels = np.arange(n)
    elif isinstance(groups, str):  # "auto": the items' patients joined by their near-copy groups
        own = [f"patient:{p}" if p not in (None, "") else f"image:{i}" for i, p in enumerate(patients)]
        labels = sampling_units(own, copies)
    else:
        labels = np.asarray(list(groups), dtype=object)
        if len(labels) != n:
            raise MedtlError(f"need one group per image ({n}), got {len(labels)}", "groups")
        labels = labels.astype(str)
    _, first, code = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[code.reshape(-1)]  # numbered by first image: one image each = 0..n-1


@contextmanager
def _eval(model: nn.Module):
    # The model in eval mode for a whole deletion test (gradcam restores the mode it finds: eval).
    was_training = model.training
    model.eval()
    try:
        yield None
    finally:
        model.train(was_training)


VERDICTS = {
    "pass": "the maps mark what the model uses (blanking them lowered the probability, and more than blanking random "
            "pixels: both intervals lie above 0)",
    "fail": "the maps do NOT mark what the model uses (the interval of the difference lies below 0: blanking "
            "them hurts the model less than blanking random pixels); do not show them as evidence",
    "inconclusive": "not shown that the maps mark what the model uses (the interval of the difference includes "
                    "0); do not show them as evidence without a larger test",
    "no_drop": "not shown that the maps mark what the model uses: blanking them beat blanking random pixels, but "
               "was not shown to lower the probability (its interval reaches 0 or below); do not show them as "
               "evidence",
}
SMALL_DELETION_TEST = 50  # fewer images: the verdict stands, but the number is not one to report


def deletion_verdict(difference: dict, drop_top: dict | None = None) -> str:
    """``pass`` when the difference's interval lies above 0 and so does the drop the maps' own regions cause
    (``drop_top``; a map whose hottest region, blanked, raises the class's probability marks no evidence for
    it, however random blanking compares), ``no_drop`` when only the first holds, ``fail`` when the difference's
    interval lies below 0, else ``inconclusive``."""
    lo, hi = difference["ci"]
    if lo > 0:
        return "pass" if drop_top is None or drop_top["ci"][0] > 0 else "no_drop"
    return "fail" if hi < 0 else "inconclusive"


def small_test_note(n: int) -> str:
    return (f" Only {n} images: {SMALL_DELETION_TEST}+ make a number worth reporting."
            if n < SMALL_DELETION_TEST else "")


def deletion_summary(result: dict, class_names: Sequence[str] | None = None) -> str:
    """One sentence a report can print for a :func:`deletion_test` result; ``class_names`` (the checkpoint's
    label names) name a class explained by its index."""
    lv = f"{result['level']:.0%}"
    pct = f"{result['fraction']:.0%}"

    def fmt(d):
        return f"{d['mean']:.3f} ({lv} CI {d['ci'][0]:.3f} to {d['ci'][1]:.3f})"

    ctrl = f"a random {pct} of the pixels" if result["control"] == "pixels" else "the same mask moved at random"
    index = result["class_idx"]
    explained = {"predicted": "the predicted class", "per image": "each image's explained class"}.get(
        index, f"class {class_names[index]!r}" if class_names and isinstance(index, int) and 0 <= index < len(
            class_names) else f"class {index}")
    # from the intervals, not a stored word: a file written before 'no_drop' existed may say 'pass' of maps whose
    # blanking raised the probability
    verdict = deletion_verdict(result["difference"], result.get("drop_top"))
    constant = result.get("constant_maps", 0)
    units = result.get("n_units", result["n"])
    where = f"{result['n']} images" + (f" ({units} independent units: the images of one patient, series or near-copy "
                                       "group resampled together)" if units != result["n"] else "")
    return (f"Deletion test on {where}: blanking the top {pct} of each map lowered the probability "
            f"of {explained} by {fmt(result['drop_top'])}; blanking {ctrl} lowered it by "
            f"{fmt(result['drop_random'])}. Difference {fmt(result['difference'])}, larger for the map in "
            f"{result['top_larger']:.0%} of images"
            + (f"; {constant} map(s) were constant (no location)" if constant else "")
            + f". Verdict: {verdict.upper().replace('_', ' ')}: {VERDICTS[verdict]}."
            + small_test_note(result["n"]))  # fmt: skip


def save_deletion_test(result: dict, path: str | Path) -> Path:
    """Write a :func:`deletion_test` result as JSON (for ``make_report(..., gradcam=[...])``)."""
    if not isinstance(result, dict) or result.get("kind") != DELETION_KIND:
        raise MedtlError("not a deletion_test result", "result")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_deletion_test(path: str | Path) -> dict:
    """Read a JSON written by :func:`save_deletion_test`; MedtlError if the file is something else."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MedtlError(f"cannot read a deletion-test JSON: {e}", path) from None
    if not isinstance(result, dict) or result.get("kind") != DELETION_KIND:
        raise MedtlError("not a deletion-test JSON (written by explain.save_deletion_test)", path)
    return result


# ----------------------------------------------------------------------------- overlays


def _norm(a: np.ndarray, zero_is_background: bool = False) -> np.ndarray:
    """Grey levels in [0, 1] between the 1st and 99th percentiles. ``zero_is_background``: a model's volume,
    z-scored over the head's voxels, keeps the air around it at exactly 0, the head's mean: scaled over the head
    alone and drawn black, as a viewer shows it (it was mid-grey, lighter than dark tissue)."""
    head = a[a != 0] if zero_is_background else a.ravel()
    if head.size == 0:
        return np.zeros_like(a, dtype=float)
    lo, hi = np.percentile(head, [1, 99])
    out = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a, dtype=float)
    return np.where(a == 0, 0.0, out) if zero_is_background else out


def _peak(cam: np.ndarray) -> tuple[int, ...]:
    # The slices go through the strongest evidence (maps are hot = 1). Upsampled maps have plateaus,
    # where argmax returns the plateau's first corner; the centre of the voxels within 5% of the
    # maximum is the peak a reader expects.
    idx = np.argwhere(cam >= cam.max() - 0.05 * (cam.max() - cam.min()))
    centre = idx.mean(axis=0)
    nearest = idx[np.argmin(((idx - centre) ** 2).sum(axis=1))]  # stay on a peak voxel
    return tuple(int(v) for v in nearest)


def overlay_png(image, cam, title: str | None = None, alpha: float = 0.6, footer: str | None = None,
                spacing: Sequence[float] | None = None) -> bytes:
    """PNG of the map over the image's first channel: one panel (2D) or three orthogonal slices (3D);
    ``footer``: a line under the panels (medtl explain: what the deletion test said of these maps);
    ``spacing``: a volume's voxel size (mm) along its three axes, so unequal voxels are drawn to scale."""
    img = np.asarray(image, dtype=float)
    img = img[0] if img.ndim == np.asarray(cam).ndim + 1 else img  # drop the channel axis
    cam = np.asarray(cam, dtype=float)
    if img.shape != cam.shape:
        raise MedtlError(f"image {img.shape} and map {cam.shape} differ in shape", "gradcam")
    if cam.ndim == 2:
        panels = [("", img, cam, None, 1.0)]
    elif cam.ndim == 3:
        p = _peak(cam)
        sx, sy, sz = (float(v) for v in spacing) if spacing is not None else (1.0, 1.0, 1.0)
        # each panel's aspect: the height of its voxels over their width (rows run along the second axis shown)
        panels = [
            (f"sagittal x={p[0]}", img[p[0]], cam[p[0]], (p[1], p[2]), sz / sy),
            (f"coronal y={p[1]}", img[:, p[1]], cam[:, p[1]], (p[0], p[2]), sz / sx),
            (f"axial z={p[2]}", img[:, :, p[2]], cam[:, :, p[2]], (p[0], p[1]), sy / sx),
        ]
    else:
        raise MedtlError(f"Grad-CAM overlays need 2D or 3D maps, got {cam.ndim}D", "gradcam")
    constant = cam.max() == cam.min()  # no location: no peak to mark, and the title says so
    fig, axes = subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.8, 3.4), squeeze=False)
    volume = cam.ndim == 3
    # RAS volumes in neurological view (patient's right on the viewer's right): edge letters per panel
    letters = {"sagittal": ("P", "A", "I", "S"), "coronal": ("L", "R", "I", "S"), "axial": ("L", "R", "P", "A")}
    for ax, (name, im, cm, peak, aspect) in zip(axes[0], panels):
        # 2D images are (rows, columns): shown as stored. Slices of RAS volumes are transposed so the
        # first axis runs left-right and the second bottom-up.
        view = (lambda a: a.T) if volume else (lambda a: a)
        origin = "lower" if volume else "upper"
        ax.imshow(_norm(view(im), zero_is_background=volume), cmap="gray", origin=origin, aspect=aspect)
        # Opacity follows the map, so weak activation leaves the anatomy visible.
        rgba = colormap("jet")(np.clip(view(cm), 0, 1))
        rgba[..., 3] = alpha * np.clip(view(cm), 0, 1)
        ax.imshow(rgba, origin=origin, aspect=aspect)
        if peak is not None and not constant:
            ax.plot(peak[0], peak[1], "w+", ms=10, mew=1.5)
        if volume:
            left, right, bottom, top = letters[name.split()[0]]
            for text, xy, ha, va in ((left, (0.02, 0.5), "left", "center"), (right, (0.98, 0.5), "right", "center"),
                                     (bottom, (0.5, 0.02), "center", "bottom"), (top, (0.5, 0.98), "center", "top")):
                ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=9, weight="bold")
        ax.set_title(name + (" (constant map: no location)" if constant else ""), fontsize=9)
        ax.axis("off")
    import matplotlib as mpl

    bar = fig.colorbar(mpl.cm.ScalarMappable(mpl.colors.Normalize(0, 1), "jet"), ax=list(axes[0]), fraction=0.04,
                       pad=0.02)
    bar.set_label("Grad-CAM: 1 = strongest evidence", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if footer:
        fig.text(0.01, -0.02, footer, fontsize=7.5, ha="left", va="top", wrap=True)
    return to_png(fig)


# The grid a map is computed on: at least 4 cells along every axis (a 2x2 grid places evidence in quadrants,
# a 1x1x1 grid nowhere) and 49 in all, the 7x7 of Grad-CAM's own ResNets at 224 px. On a model trained to find a
# 16 px square in 128 px chest X-rays, the 4x4 grid of layer4 put the map's peak on the square in 6 of 24 test
# images (median 21.5 px away), the 8x8 of layer3 in 19 (6 px); at 64 px the 8x8 of layer2 beat layer3's 4x4
# (median 7.6 against 13.9 px). docs/evaluation.md gives the experiment.
MIN_CELLS_PER_AXIS = 4
MIN_CELLS = 49


def coarse(grid: Sequence[int], model: nn.Module | None = None) -> bool:
    """Whether a layer's activation grid is too coarse to place evidence (see MIN_CELLS). A 2.5D ``model``'s
    slices are not pooled: its grid is as fine as its in-plane axes."""
    encoder = _slice_encoder(model) if model is not None else None
    plane = [g for i, g in enumerate(grid) if encoder is None or i != encoder.slice_axis]
    return min(plane) < MIN_CELLS_PER_AXIS or math.prod(plane) < MIN_CELLS


def choose_layer(model: nn.Module, image, candidates: Sequence[str]) -> tuple[str, tuple]:
    """The deepest of ``candidates`` (deepest first) whose activation grid for ``image`` is not :func:`coarse`,
    with that grid; else the shallowest. A coarse grid, upsampled, looks like a location it does not have."""
    names = dict(model.named_modules())
    present = [c for c in candidates if c in names]
    if not present:
        raise MedtlError(f"none of the layers {list(candidates)} is in the model: give --layer", "layer")
    grids: dict[str, tuple] = {}
    hooks = [names[c].register_forward_hook(lambda m, i, o, c=c: grids.__setitem__(c, _grid(model, o)))
             for c in present]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_batch_of_one(image, _spatial_dims(model)).to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    spatial = _spatial_dims(model)
    flat = [c for c in present if len(grids.get(c, ())) != spatial]
    if flat:
        raise MedtlError(f"{flat[0]} has no spatial output to place evidence on (output grid {grids.get(flat[0])}): "
                         "explain a convolutional stage of the encoder", "layer")
    for c in present:
        if not coarse(grids[c], model):
            return c, grids[c]
    return present[-1], grids[present[-1]]


def save_gradcam(
    model: nn.Module,
    image,
    path: str | Path,
    target_layer: str,
    class_idx: int | None = None,
    title: str | None = None,
) -> Path:
    """Compute Grad-CAM for one image or volume and save the overlay PNG to ``path``."""
    cam = gradcam(model, image, target_layer, class_idx)
    img = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    img = img[0] if img.ndim == cam.ndim + 2 else img  # drop a batch axis, keep (C, *spatial)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(overlay_png(img, cam, title))
    return path
