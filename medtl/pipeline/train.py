"""``medtl train``: one classifier on your own images, end to end, without a pipeline YAML.

``train_model(train, out)`` takes a manifest CSV or a ``<folder>/<label>/<file>`` folder (made into
a manifest by the manifest builder, ``medtl.data.build``), trains with the supervised trainer that
``medtl pretrain`` uses (``medtl.engine.pretrain.pretrain_on``: encoder + head, full fine-tuning, from
random weights or from ``init``: a ``medtl pretrain`` model.pt, a pipeline best.pt or other local
weights), chooses the binary operating threshold on the validation split (the evaluation's threshold
rule), and scores the test split with the evaluation (predictions table -> report.json/.md/.html,
bootstrap confidence intervals).

Output folder::

    manifest.csv (+ .meta.json)   the training manifest (built from a folder, or a copy of the given one),
                                  recording its data root
    val_manifest.csv, test_manifest.csv   when --val / --test were given (every row in that split)
    model.pt                      the deployable checkpoint: medtl predict / export-bundle read it
    predictions.csv               val and test predictions (the evaluation's table)
    report.json / .md / .html     test metrics with CIs; figures/
    metrics.jsonl, best.pt, last.pt, config.json   the trainer's run folder (resumable)
    train_inputs.json             what the weights were trained on: a rerun resumes only with the same
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medtl.data.datasets import make_loader
from medtl.data.manifest import Manifest, data_root_for, require_files
from medtl.data.transforms import Preset
from medtl.errors import MedtlError
from medtl.paths import file_sha256, is_inside

log = logging.getLogger(__name__)
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
TASK_NAME = "label"  # the manifest column the model predicts
STRATEGY = "full"  # every parameter trains (the trainer's full fine-tuning)


@dataclass
class Inputs:
    """The rows of each split, the root each split's paths are relative to, and the manifest files."""

    splits: dict[str, Manifest]
    roots: dict[str, Path]
    manifests: dict[str, Path]
    label_names: list[str]
    modality: str
    to_save: dict[Path, tuple[Manifest, Path]] = field(default_factory=dict)  # out file -> (manifest, root)


def save_inputs(inputs: Inputs) -> None:
    """Write the manifests into the output folder, each recording its data root: the run is self-contained."""
    for path, (m, root) in inputs.to_save.items():
        if m.source is None or Path(m.source).resolve() != path.resolve():  # not when it is that file already
            m.save(path, data_root=root)


@dataclass
class TrainOwnResult:
    out: Path
    model: Path
    inputs: Inputs
    predictions: Path
    report: dict[str, Path] | None
    threshold: dict[str, Any] | None
    test_metrics: dict[str, Any] = field(default_factory=dict)  # headline metric -> {value, ci_low, ci_high}
    best_epoch: int | None = None
    epochs_run: int = 0
    notes: list[str] = field(default_factory=list)
    intensity: dict[str, Any] = field(default_factory=dict)  # the preprocessing the model records (its preset's options)


def load_input(spec: str | Path, role: str, out: Path, data_root: str | Path | None, *, seed: int = 0,
               fractions=DEFAULT_FRACTIONS, modality: str | None = None,
               progress: bool = True) -> tuple[Manifest, Path, Path]:
    """A manifest CSV or an image folder -> ``(manifest, its data root, where it is saved in out)``.

    A folder becomes a manifest through the manifest builder; its root is
    ``data_root`` when that contains it, else the folder itself. A CSV keeps its rows; its root is
    ``data_root``, else the one its .meta.json records, else the default. For ``role`` val or test
    every row of the input belongs to that split (a separate set is used whole). ``modality``, when
    given, is the preset for every row, also of a manifest that recorded another.
    """
    from medtl.data.build import build_manifest

    p = Path(spec)
    name = "manifest.csv" if role == "train" else f"{role}_manifest.csv"
    if p.is_dir():
        root = Path(data_root) if data_root is not None and is_inside(p, Path(data_root)) else p
        # near-copy groups keep copies in one split, and in a set used whole they are the bootstrap's units: two
        # copies of one image resampled apart narrow its intervals
        whole = {"val": (0.0, 1.0, 0.0), "test": (0.0, 0.0, 1.0)}
        m = build_manifest(p, root, seed=seed, fractions=whole.get(role, fractions), modality=modality,
                           progress=progress)
        if role != "train":
            m = m.with_splits([role] * len(m))
        return m, root.resolve(), out / name
    if not p.exists():
        raise MedtlError("not found: no such manifest or folder", p)
    if p.suffix.lower() != ".csv" or not p.is_file():
        raise MedtlError("expected a manifest .csv or a folder of <label>/<file> images", p)
    m = Manifest.load(p)
    if modality is not None:
        m = Manifest([replace(r, modality=modality) for r in m.rows], list(m.label_names), dict(m.meta), m.source)
    root = Path(data_root_for(m, data_root)).resolve()
    require_files(m, root)  # before any decoding or training, naming the user's manifest
    if role != "train":
        m = m.with_splits([role] * len(m))
    # written to out/<name> (see save_inputs): a copy with the split it served and its root
    return m, root, out / name


def _without_copies_of_training(m: Manifest, root: Path, train_m: Manifest, train_root: Path, role: str, given,
                                progress: bool, scanned: dict) -> Manifest:
    """A separate val/test set less its images that are identical to, or near-copies of, images medtl train learns
    from (its train split): scored, they would make the scores optimistic; warned about with their number."""
    from medtl.data.build import drop_near_copies_of

    learned = train_m.select(split="train")
    kept, copied = drop_near_copies_of(m.rows, learned, root, other_root=train_root, progress=progress,
                                       scanned=scanned)
    if not copied:
        return m
    if not kept:
        raise MedtlError(f"every {role} image is identical to or a near-copy of a training image: nothing unseen "
                         f"to {'score' if role == 'test' else 'choose the threshold on'}", given)
    log.warning("%s: %d of %d %s images are identical to or near-copies of training images: left out of %s (scored, "
                "they would make the scores optimistic)", given, copied, len(m), role, role)
    return Manifest(kept, list(m.label_names), dict(m.meta), m.source)


def _without_learned(m: Manifest, root: Path, learned: set[str], role: str, given, init) -> Manifest:
    """A separate val/test set less the images the --init model learned from, warned about with their number."""
    kept = [r for r in m.rows if _file_key(root, r.path) not in learned]
    if len(kept) == len(m):
        return m
    if not kept:
        raise MedtlError(f"every {role} image is one the --init model learned from ({init}): nothing unseen to "
                         f"{'score' if role == 'test' else 'choose the threshold on'}", given)
    log.warning("%s: %d of %d %s images are images the --init model learned from (%s): left out of %s (scored, they "
                "would make the scores optimistic)", given, len(m) - len(kept), len(m), role, init, role)
    return Manifest(kept, list(m.label_names), dict(m.meta), m.source)


def _file_key(root: Path, row_path: str) -> str | None:
    """One file's real path (links resolved), whichever data root a manifest names it from."""
    from medtl.paths import resolve_inside

    try:
        return str(resolve_inside(root, row_path))
    except MedtlError:
        return None


def init_learned_files(init: str | Path | None) -> tuple[set[str], list[str]]:
    """The files a medtl checkpoint given as ``init`` learned from (the splits it trained on of the manifests it
    records, as real paths) and those manifests. Nothing for other weights, or where a manifest is gone (said)."""
    if init is None:
        return set(), []
    from medtl.models.checkpoint import is_checkpoint, trained_from
    from medtl.models.weights import read_file

    obj = read_file(init)
    if not is_checkpoint(obj):
        return set(), []
    files, read = set(), []
    for recorded, found, splits in trained_from(init, obj["meta"]):
        if found is None:
            log.warning("%s: the manifest this model was trained from (%s) is not found, so its test images are not "
                        "checked against the images the model learned from", init, recorded)
            continue
        m = Manifest.load(found)
        root = data_root_for(m)
        files.update(k for r in m.rows if r.split in splits for k in [_file_key(root, r.path)] if k)
        read.append(str(found))
    return files, read


def _learned_to_train(m: Manifest, root: Path, learned: set[str]) -> tuple[Manifest, int]:
    """``m`` with every val/test image the --init model learned from moved into the train split, with the images
    of its patient and its near-copies (a split keeps those together)."""
    from medtl.data.manifest import NEAR_COPY_GROUP

    moved = {i for i, r in enumerate(m.rows) if r.split in ("val", "test") and _file_key(root, r.path) in learned}
    if not moved:
        return m, 0
    while True:  # to a fixed point: a near-copy may belong to another patient
        patients = {m.rows[i].patient_id for i in moved} - {""}  # a folder's ids are its paths: no one else's
        groups = {m.rows[i].extras.get(NEAR_COPY_GROUP) for i in moved} - {None, ""}
        more = {i for i, r in enumerate(m.rows) if r.split in ("val", "test") and i not in moved
                and (r.patient_id in patients or r.extras.get(NEAR_COPY_GROUP) in groups)}
        if not more:
            break
        moved |= more
    rows = [replace(r, split="train") if i in moved else r for i, r in enumerate(m.rows)]
    return Manifest(rows, list(m.label_names), dict(m.meta), None), len(moved)  # no source: saved into out


def gather_inputs(train, out: Path, *, val=None, test=None, data_root=None, seed: int = 0,
                  modality: str | None = None, positive_class: str | None = None, progress: bool = True,
                  init: str | Path | None = None) -> Inputs:
    """The train/val/test rows from ``train`` (its own splits) or separate ``val``/``test`` inputs,
    checked before any training: files exist (:func:`load_input`), one modality, val/test labels known
    to training, and no val/test image that ``init`` (a medtl checkpoint) learned from."""
    # With a separate val/test set, the train folder's share for that split goes to training instead.
    fr = list(DEFAULT_FRACTIONS)
    if val is not None:
        fr[0], fr[1] = fr[0] + fr[1], 0.0
    if test is not None:
        fr[0], fr[2] = fr[0] + fr[2], 0.0
    train_m, train_root, train_path = load_input(train, "train", out, data_root, seed=seed, fractions=tuple(fr),
                                                 modality=modality, progress=progress)
    learned, init_manifests = init_learned_files(init)
    train_m, moved = _learned_to_train(train_m, train_root, learned)
    if moved:  # scored, they would make the scores optimistic: the model has seen them
        log.warning("%s: %d val/test image(s) of this split (with their near-copies and patients) are images the "
                    "--init model learned from (%s): moved into the train split. To score on the split the --init "
                    "model held out, train on its manifest (--train %s)", train, moved, init,
                    init_manifests[0])
    splits, roots, manifests = {}, {}, {}
    training_scan: dict = {}  # the train split's thumbnails, read once for a --val and a --test set
    to_save = {train_path: (train_m, train_root)}
    for role, spec in (("train", None), ("val", val), ("test", test)):
        if spec is None:
            splits[role], roots[role], manifests[role] = train_m.select(split=role), train_root, train_path
        else:
            m, root, path = load_input(spec, role, out, data_root, seed=seed, modality=modality, progress=progress)
            m = _without_copies_of_training(m, root, train_m, train_root, role, spec, progress, training_scan)
            m = _without_learned(m, root, learned, role, spec, init)
            splits[role], roots[role], manifests[role] = m, root, path
            to_save[path] = (m, root)
    given = {"train": train, "val": val if val is not None else train, "test": test if test is not None else train}
    where = str(train)  # errors name what the user gave
    if not len(splits["train"]):
        raise MedtlError("no rows in the train split", where)
    labels = [name for name in train_m.label_names if name != "unlabelled"]
    if positive_class is not None:  # the class sensitivity finds: the model's last output, as evaluate reads it
        if len(labels) != 2 or positive_class not in labels:
            raise MedtlError(f"{positive_class!r} is not one of the two classes; the labels are {labels}",
                             "--positive-class")
        labels = [name for name in labels if name != positive_class] + [positive_class]
    from medtl.data.check import label_warnings

    for warning in label_warnings(Manifest([r for m in splits.values() for r in m], labels)):
        log.warning("%s: %s", where, warning)
    unlabelled = sum(r.label == "unlabelled" for r in splits["train"])
    if unlabelled:
        raise MedtlError(f"{unlabelled} training rows are 'unlabelled': medtl train needs a class label per image",
                         where)
    unseen = [name for name in labels if not any(r.label == name for r in splits["train"])]
    if len(labels) < 2 or unseen:  # a model cannot learn a class it never sees; it would score test all the same
        raise MedtlError(f"medtl train needs training images of at least two classes; the train split has none of "
                         f"{unseen or 'a second class'} (labels {labels})", given["train"])
    for role in ("val", "test"):
        unknown = sorted({r.label for r in splits[role]} - set(labels))
        if unknown:
            raise MedtlError(f"{role} labels {unknown} are not among the training labels {labels}", given[role])
    # one class order for every split (a separate test folder lists only its own classes): a label's index is the
    # model's output for it, and the positive class comes last
    splits = {role: Manifest(m.rows, list(labels), dict(m.meta), m.source) for role, m in splits.items()}
    to_save = {path: (Manifest(m.rows, list(labels), dict(m.meta), m.source), root)
               for path, (m, root) in to_save.items()}
    mods = sorted({r.modality for m in splits.values() for r in m})
    if len(mods) != 1:
        by_input: dict[str, set] = {}
        for role in ("train", "val", "test"):
            by_input.setdefault(str(given[role]), set()).update(r.modality for r in splits[role])
        each = "; ".join(f"{name} ({', '.join(sorted(m))})" for name, m in by_input.items() if m)
        if "mri3d" in mods:  # no preset reads both: the files themselves differ
            raise MedtlError(f"the inputs mix 3D volumes and 2D images: {each}. One model reads one kind: put the "
                             "volumes and the 2D images in separate folders and train on one of them", where)
        raise MedtlError(f"the inputs mix modalities: {each}. Give --modality (cxr, mri2d or mri3d) to prepare "
                         "every input with one preset", where)
    if not len(splits["test"]):
        log.warning("no test rows: the model is trained but not scored (give --test, or a manifest with a test split)")
    per_image = str(train_m.meta.get("patient_ids", "")).startswith("per image") or (
        len(train_m) > 0 and all(r.extras.get("patient_id_kind") == "per_image" for r in train_m))
    if (val is None or test is None) and per_image:
        # a folder knows no patients: two images of one patient may land in train and test
        log.warning("%s: no patient ids, so each image counts as its own patient; images of one patient in both "
                    "train and %s make the scores optimistic. Give a manifest with a patient_id column, or a "
                    "separate --test set from other patients (docs/own_data.md)", train,
                    "val and test" if val is None and test is None else ("val" if val is None else "test"))
    return Inputs(splits, roots, manifests, labels, mods[0], to_save)


def _init_defaults(init: str | Path | None) -> dict[str, Any]:
    """Architecture and image size of a medtl checkpoint given as ``init`` (empty for other weights)."""
    if init is None:
        return {}
    from medtl.models.checkpoint import is_checkpoint
    from medtl.models.weights import read_file

    obj = read_file(init)
    if not is_checkpoint(obj):
        return {}
    meta = obj["meta"]
    enc = (meta.get("model") or {}).get("encoder") or {}
    if enc.get("lift"):
        raise MedtlError("this checkpoint's encoder is lifted to 3D; medtl train starts from 2D encoders or "
                         "plain 3D ones", init)
    intensity, dims = meta.get("intensity") or {}, enc.get("spatial_dims", 2)
    if dims == 3:
        size = intensity.get("volume_shape") or meta.get("image_size")
    else:
        size = intensity.get("image_size") or (meta.get("image_size") or [None])[0]
    found = {"arch": enc.get("arch"), "stem_stride": enc.get("stem_stride"), "image_size": size, "spatial_dims": dims}
    if dims == 3:  # the voxel size goes with the input size; a record without one is of a medtl that used 2 mm
        from medtl.data.transforms import recorded_options

        found["spacing"] = recorded_options(intensity)["spacing"] if intensity.get("preset") else intensity.get("spacing")
    return found


RUN_KEY_FILE = "train_inputs.json"


def _preset_options(modality: str, image_size, spacing=None) -> tuple[Any, dict[str, Any]]:
    """The model's input size and the preset's options. A 3D size without a spacing keeps the preset's field of
    view (160x192x160 mm): 40 48 40 voxels are 4 mm each, not 2 mm voxels that cover the top 80 mm of a head."""
    from medtl.data.transforms import DEFAULTS, voxel_spacing

    if Preset(modality).spatial_dims == 3:
        if image_size is not None and not isinstance(image_size, (list, tuple)):
            image_size = [image_size]  # one value given for volumes: refused below, not silently the default
        shape = image_size if image_size is not None else DEFAULTS["mri3d"]["volume_shape"]
        if len(shape) != 3:
            raise MedtlError(f"3D volumes need three sizes (e.g. 80 96 80), got {list(shape)}", "--image-size")
        size = [int(s) for s in shape]
        _sensible_size(size, MAX_VOLUME_SIDE, "voxels", "80 96 80")
        return size, {"volume_shape": tuple(size), "spacing": voxel_spacing(size, spacing)}
    if spacing is not None:
        raise MedtlError(f"--spacing sets the voxel size of 3D volumes; these images are {modality} (2D)", "--spacing")
    size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size or DEFAULTS[modality]["image_size"])
    _sensible_size([size], MAX_IMAGE_SIDE, "px", "128")
    return size, {"image_size": size}


# far above what these presets are used at (128 px, 80x96x80): a typo (100000) asked for terabytes, and the error
# then named an image file and the allocation, not the option
MAX_IMAGE_SIDE, MAX_VOLUME_SIDE = 2048, 512


def _sensible_size(size: list[int], most: int, unit: str, default: str) -> None:
    if min(size) < 1 or max(size) > most:
        raise MedtlError(f"{' x '.join(map(str, size))} {unit}: each side must be 1 to {most} (the default is {default}; "
                         "images are resized to this size, so larger sides ask for far more memory, not more detail "
                         "than the files hold)", "--image-size")


def train_model(
    train: str | Path,
    out: str | Path,
    *,
    val: str | Path | None = None,
    test: str | Path | None = None,
    data_root: str | Path | None = None,
    init: str | Path | None = None,
    arch: str | None = None,
    lift: str | None = None,
    image_size: int | list[int] | None = None,
    spacing: float | list[float] | None = None,
    modality: str | None = None,
    positive_class: str | None = None,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    patience: int | None = 5,
    seed: int = 0,
    device: str = "auto",
    amp: str = "auto",
    threshold_rule: str = "youden",
    target: float | None = None,
    n_boot: int = 1000,
    cache: str = "memory",
    num_workers: int = 0,
    max_steps_per_epoch: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainOwnResult:
    """Train, choose the threshold on val, score test; see the module note for what ``out`` holds."""
    from medtl.engine.distributed import require_single_process

    require_single_process("medtl train")
    from medtl.data.datasets import build_dataset
    from medtl.engine.evaluate import predict
    from medtl.engine.pretrain import check_resumable, pretrain_on
    from medtl.data.transforms import DEFAULTS
    from medtl.engine.trainer import amp_dtype, resolve_device
    from medtl.evaluation.evaluate import EvalSettings, load_report
    from medtl.evaluation.predictions import NEAR_COPY_GROUP, predictions_from_arrays, write_predictions
    from medtl.evaluation.report import make_report
    from medtl.evaluation.thresholds import DEFAULT_THRESHOLD, checkpoint_threshold
    from medtl.models.checkpoint import load_checkpoint, save_checkpoint
    from medtl.lock import OutputLock

    out = Path(out)
    with OutputLock(out, "medtl train"):  # a second run into this folder would overwrite this one's weights
        settings = EvalSettings(threshold_rule=threshold_rule, target=target, n_boot=n_boot)  # checked before training
        inputs = gather_inputs(train, out, val=val, test=test, data_root=data_root, seed=seed, modality=modality,
                               positive_class=positive_class, progress=progress, init=init)
        from_init = _init_defaults(init)
        dims = Preset(inputs.modality).spatial_dims
        init_dims = from_init.get("spatial_dims", 2 if init is not None else None)
        if lift is not None and dims != 3:
            raise MedtlError(f"--lift makes a 2D encoder read volumes; these images are {inputs.modality} (2D)", "--lift")
        if lift is not None and init_dims == 3:
            raise MedtlError("--lift lifts a 2D encoder; this checkpoint's encoder is 3D already: leave --lift out",
                             init)
        if from_init and init_dims != dims and lift is None:
            raise MedtlError(f"the checkpoint's encoder is {init_dims}D but the images are {inputs.modality} ({dims}D)"
                             + ("; give --lift i3d, acs or 2.5d to lift it to 3D (docs/models.md)" if dims == 3 else ""),
                             init)
        arch = arch or from_init.get("arch") or "resnet18"
        # the checkpoint's voxel size goes with its input size; a size given here keeps the field of view. A 2D
        # checkpoint lifted to volumes has no 3D size to give: the 3D default applies
        init_size = from_init.get("image_size") if init_dims == dims else None
        size, preset_options = _preset_options(inputs.modality, image_size or init_size,
                                               spacing if spacing is not None or image_size else from_init.get("spacing"))
        lr = lr if lr is not None else (1e-4 if init is not None else 1e-3)  # gentler when the weights already mean something

        check_resumable(out, resume, {
            "train": inputs.splits["train"].content_hash(), "val": inputs.splits["val"].content_hash(),
            "modality": inputs.modality, "labels": inputs.label_names, "arch": arch, "image_size": size,
            "init": str(init) if init else None, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
            # the file's content: another model saved over the same path is other weights to start from
            "init_sha256": file_sha256(init) if init else None,
            "seed": seed, **({"lift": lift} if lift else {}),
            # only when not the default, so that folders of runs from before the option still resume
            **({"spacing": list(preset_options["spacing"])} if tuple(preset_options.get("spacing", ()))
               not in ((), tuple(DEFAULTS["mri3d"]["spacing"])) else {})}, RUN_KEY_FILE)
        save_inputs(inputs)  # only now: a refused rerun leaves the folder's manifest as it was
        common = {"cache": cache, "run_dir": out, "progress": None if progress else False, **preset_options}
        datasets = {role: build_dataset(m, inputs.roots[role], inputs.modality, role == "train", **common)
                    for role, m in inputs.splits.items() if len(m)}
        train_m = inputs.splits["train"]
        meta = {
            "task_name": TASK_NAME,
            "intensity": {"preset": inputs.modality, **Preset(inputs.modality).resolved(preset_options)},
            "manifest_hash": train_m.content_hash(),
            "manifest": str(inputs.manifests["train"].resolve()),  # read from any folder: predict, --init
            "domains": sorted({r.domain for r in train_m}),
            "strategy": STRATEGY,
            "precision": amp,
            "name": f"medtl-{arch}-{inputs.modality}-{out.resolve().name}",
        }
        has_val = "val" in datasets
        result = pretrain_on(
            datasets["train"], datasets.get("val"), out, label_names=inputs.label_names, mode="supervised", arch=arch,
            spatial_dims=dims, image_size=size, stem_stride=from_init.get("stem_stride") or 2, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, init_weights=init, lift=lift, seed=seed,
            num_workers=num_workers, meta=meta, resume=resume, device=device, amp=amp,
            patience=patience if has_val else None, progress=progress, max_steps_per_epoch=max_steps_per_epoch,
            desc="train",
        )

        # Val and test predictions from the saved model: exactly what medtl predict will load.
        model, ck_meta = load_checkpoint(result.path)
        dev = resolve_device(device)
        model.to(dev)
        tables, outputs = [], {}
        for split in ("val", "test"):
            if split not in datasets:
                continue
            loader = make_loader(datasets[split], batch_size, False, seed, num_workers=num_workers)
            p = predict(model, loader, dev, amp_dtype(amp, dev), progress=progress)
            outputs[split] = p
            # near-copies of one image are one bootstrap unit, as in medtl evaluate --labels with this manifest;
            # the strategy column is the model's name, as predict's results call it: medtl report on two runs'
            # predictions compares two models (one name for both pooled them as seeds of one strategy)
            groups = {r.path: r.extras.get(NEAR_COPY_GROUP) or None for r in inputs.splits[split]}
            copies = {NEAR_COPY_GROUP: [groups.get(str(c)) for c in p["case_id"]]} if any(groups.values()) else {}
            cases = [str(c) for c in p["case_id"]]
            if split == "test" and inputs.roots["test"] != inputs.roots["val"] and \
                    set(cases) & {str(c) for c in outputs.get("val", {}).get("case_id", [])}:
                # a separate test folder laid out as the training one (tumor/Y105.jpg in both): one table, so
                # its cases are named with their folder
                cases = [f"{inputs.roots['test'].name}/{c}" for c in cases]
            tables.append(predictions_from_arrays(
                cases, p["label"], p["prob"], class_names=inputs.label_names, patient_ids=p.get("patient_id"),
                domain=p.get("domain", ""), split=split, run_id=f"seed{seed}", strategy=meta["name"], task=TASK_NAME,
                seed=seed, **copies))  # fmt: skip

        notes: list[str] = []
        threshold, extra = None, {}
        if len(inputs.label_names) == 2:
            if "val" in outputs:
                extra = checkpoint_threshold(outputs["val"]["label"] == 1, outputs["val"]["prob"][:, 1], threshold_rule,
                                             target)
            else:
                extra = {"threshold": DEFAULT_THRESHOLD,
                         "threshold_rule": {"value": DEFAULT_THRESHOLD, "rule": "default", "note": "no validation rows"}}
            threshold = extra["threshold_rule"]
            if threshold["rule"] == "default":  # one class in val, or none: say so and keep the default
                notes.append(f"threshold: {threshold['note']}; the default {DEFAULT_THRESHOLD} is stored in the model")
        # The deployable checkpoint: the trainer's meta plus the operating threshold chosen on validation.
        kept = {k: v for k, v in ck_meta.items() if k != "model"}  # the model config is rebuilt from the weights
        save_checkpoint(result.path, model.cpu(), **{**kept, **extra})

        import pandas as pd

        pred_path = write_predictions(pd.concat(tables, ignore_index=True), out / "predictions.csv") if tables else None
        report_paths, headline = None, {}
        if "test" in outputs:
            curves = out / "metrics.jsonl" if len(result.train.history) > 1 else None  # one epoch draws no curve
            report_paths = make_report(pred_path, out, settings=settings, metrics_log=curves)
            report = load_report(report_paths["json"])
            entry = report["tasks"][TASK_NAME]["strategies"][meta["name"]]
            headline = entry.get("metrics") or {}
            notes += report.get("notes", []) + report["tasks"][TASK_NAME].get("notes", [])
        else:
            notes.append("no test rows: nothing was scored")
        return TrainOwnResult(out, result.path, inputs, pred_path, report_paths, threshold, headline,
                              result.train.best_epoch, len(result.train.history), notes, dict(meta["intensity"]))


def _holds_dicom(m: Manifest) -> bool:
    from medtl.data import io

    return any(io.kind_of(r.path).startswith("dicom") for r in m)


def next_commands(result: TrainOwnResult, train_input: str | Path, test_input: str | Path | None = None) -> list[str]:
    """The commands a user runs next: predict the test images (or all of a training folder), then
    evaluate those predictions; the evaluation scores the same test images medtl train scored."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    pred_dir = result.out / "predict"
    source = Path(test_input if test_input is not None else train_input)
    # --labels in both cases: the manifest's patient ids and near-copy groups are the bootstrap's units (predict
    # carries only label and split), so the intervals are those medtl train reported
    labels = f" --labels {q(result.inputs.manifests['test'])}"
    role = "test" if test_input is not None else "train"
    if source.is_dir() and not _holds_dicom(result.inputs.splits[role]):
        predict = f"--input {q(source)}"  # a folder: predict every image, the labels and splits come from the manifest
    else:  # a manifest: predict carries its label and split columns into results.csv. A folder of DICOM files too:
        # predict names a folder's DICOM by its series UID, which no manifest path matches
        predict = f"--input {q(result.inputs.manifests[role])} --data-root {q(result.inputs.roots[role])}"
    return [
        f"medtl predict --model {q(result.model)} {predict} --out {q(pred_dir)}",
        f"medtl evaluate --predictions {q(pred_dir / 'results.csv')}{labels} --out {q(pred_dir / 'report')}",
    ]


__all__ = ["Inputs", "TrainOwnResult", "gather_inputs", "load_input", "next_commands", "save_inputs", "train_model"]
