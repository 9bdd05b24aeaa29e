"""What the stages and jobs of one ``medtl run`` share: the config, its manifests (read once), the
datasets (decoded once) and the encoder a job starts from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from medtl.data.datasets import build_dataset
from medtl.data.manifest import Manifest
from medtl.data.transforms import Preset
from medtl.errors import MedtlError
from medtl.models import encoder_for
from medtl.pipeline.config import DataSpec, PipelineConfig, StrategySpec, TaskSpec

DATASET_MEMO_SIZE = 16


class Context:
    """One pipeline run's config, folders and memos, handed to every stage, check and job."""

    def __init__(self, config: PipelineConfig, config_path: Path, data_root: Path, out: Path, profile: str | None):
        self.config, self.config_path, self.data_root, self.out, self.profile = config, config_path, data_root, out, profile
        self.base = config_path.parent
        self.datasets: dict[tuple, Any] = {}  # see dataset
        self.manifests: dict[Path, Manifest] = {}  # see load
        self.tick: Callable[[], None] = lambda: None  # records the running stage's time so far (run_pipeline sets it)
        self.progress = True  # one progress bar per long stage (run_pipeline's progress argument)

    def manifest_path(self, spec: DataSpec, key: str) -> Path:
        path = Path(spec.manifest)
        path = path if path.is_absolute() else (self.base / path).resolve()
        if not path.exists():
            raise MedtlError(f"manifest {spec.manifest} not found (resolved to {path})", f"{self.config_path}: {key}.manifest")
        return path

    def manifest(self, spec: DataSpec, key: str) -> Manifest:
        """The manifest as its CSV says, read once per run (every job asks again); do not modify it."""
        path = self.manifest_path(spec, key)
        if path not in self.manifests:
            self.manifests[path] = Manifest.load(path)
        return self.manifests[path]

    def load(self, spec: DataSpec, key: str, task: TaskSpec | None = None) -> Manifest:
        """A copy of the manifest, relabelled for ``task`` and capped as the profile says."""
        m = self.manifest(spec, key)
        m = Manifest(list(m.rows), list(m.label_names), dict(m.meta), m.source)  # callers may change their copy
        if task is not None:
            m = apply_task(m, task)
        if spec.max_per_split:
            # unsupervised adaptation trains on the target's train images without their labels: nor may the
            # labels choose which images those are
            blind = ("train",) if key == "target" and self.config.unlabelled_target else ()
            m = m.sample(spec.max_per_split, label_blind=blind)
        return m


def apply_task(m: Manifest, task: TaskSpec) -> Manifest:
    """Relabel rows for ``task``: a label column other than ``label`` and/or a label map."""
    rows = []
    for r in m:
        value = r.label if task.label_column == "label" else r.extras.get(task.label_column, "")
        if task.label_map:
            value = task.label_map.get(value, value)
        rows.append(replace(r, label=str(value)))
    if task.kind == "regression":
        return Manifest(rows, [], dict(m.meta), m.source)
    labels = sorted({r.label for r in rows} - {"unlabelled"})
    return Manifest(rows, labels, dict(m.meta), m.source)


def modality_of(m: Manifest, spec: DataSpec) -> str:
    """The config's preset for this data, else the manifest's one modality."""
    return spec.preset or m.modality


def source_checkpoint(ctx: Context, name: str | None) -> Path:
    """The model.pt a strategy starts from: the default pretraining, or the named source's."""
    return ctx.out / "pretrain" / ("model.pt" if name is None else f"sources/{name}/model.pt")


def start_encoder(ctx: Context, dims: int, spec: StrategySpec):
    """The encoder a job starts from: the pretrained 2D one (lifted for 3D) or a random one."""
    enc = ctx.config.encoder
    checkpoint = source_checkpoint(ctx, spec.source) if spec.pretrained else None
    return encoder_for(checkpoint, dims, spec.lift or enc.lift or "none", arch=enc.arch, stem_stride=enc.stem_stride)


def dataset(ctx: Context, m: Manifest, spec: DataSpec, train: bool, task: TaskSpec | None = None):
    """A dataset over ``m``; the same rows with the same options are decoded once per pipeline run.

    Jobs share most of their data (every strategy of a seed sees the same split), and decoding is the
    slow part on CPU. Sharing is safe: the deterministic chain's output is fixed, and each job's
    DataLoader reseeds the random part from the job's seed.
    """
    modality = modality_of(m, spec)
    kind = task.kind if task else "classification"
    key = (spec.model_dump_json(), modality, train, kind, tuple(m.label_names),
           tuple((r.path, r.label, r.patient_id, r.domain) for r in m))
    if key not in ctx.datasets:
        while len(ctx.datasets) >= DATASET_MEMO_SIZE:  # bounded: 3D volumes are large
            ctx.datasets.pop(next(iter(ctx.datasets)))
        ctx.datasets[key] = build_dataset(m, ctx.data_root, modality, train, task=kind,
                                          **Preset(modality).options(spec.preset_options()))
    return ctx.datasets[key]


def heterogeneous(ctx: Context) -> bool:
    """Source and target label sets differ (chest X-ray findings vs brain MRI classes)."""
    cfg = ctx.config
    tgt = ctx.load(cfg.target, "target", cfg.tasks[0]).label_names
    if cfg.unlabelled_target:
        # UDA: the source, relabelled by the task, must cover the target's classes
        src = apply_task(ctx.manifest(cfg.source, "source"), cfg.tasks[0]).label_names
        if not set(tgt) <= set(src):
            raise MedtlError(f"target labels {sorted(set(tgt) - set(src))} are not in the source label set {src}: "
                             "unsupervised adaptation needs a shared label set", f"{ctx.config_path}: tasks")
        return False
    src = ctx.manifest(cfg.source, "source").label_names
    return sorted(src) != sorted(tgt)
