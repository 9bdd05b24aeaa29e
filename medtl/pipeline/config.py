"""Pipeline configs: YAML validated into typed objects, with profiles.

A pipeline names its source data and pretraining, its target data and tasks, the encoder and how it
is lifted, the transfer strategies, label fractions and seeds. ``profiles`` hold overrides merged
over the base config (``quick`` for CI, ``cpu`` for 2-core runs; the base is sized for one GPU).
Unknown keys and wrong types are refused with the key's dotted path named (an unknown key with the
nearest known one: "did you mean").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtl.errors import MedtlError, closest
from medtl.evaluation.thresholds import RULES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    manifest: str  # relative to the config file (or absolute); paths inside it are relative to the data root
    preset: Literal["cxr", "mri2d", "mri3d"] | None = None
    image_size: int | None = Field(None, ge=8)
    spacing: tuple[float, float, float] | None = None
    volume_shape: tuple[int, int, int] | None = None
    max_per_split: int | None = Field(None, ge=1)  # about this many rows per split (profiles bound run time)

    def preset_options(self) -> dict[str, Any]:
        opts = {"image_size": self.image_size, "spacing": self.spacing, "volume_shape": self.volume_shape}
        return {k: v for k, v in opts.items() if v is not None}


class TaskSpec(Strict):
    name: str
    kind: Literal["classification", "regression"] = "classification"
    label_column: str = "label"
    label_map: dict[str, str] | None = None  # e.g. merge tumour types into "tumor"


class PretrainSpec(Strict):
    # supervised (the source labels), autoencoder (VAE) or moco (self-supervised MoCo v2, labels unused)
    mode: Literal["supervised", "autoencoder", "moco"] = "supervised"
    # use this medtl checkpoint instead of training (relative to the config file): e.g. an earlier run's
    # pretrain/model.pt, when its target manifest changed and the run starts again in a new --out, or a model.pt
    # of medtl pretrain under torchrun. encoder.arch and stem_stride must be the checkpoint's (refused otherwise)
    checkpoint: str | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-3, ge=0)
    # the self-supervised method's hyper-parameters (moco: medtl.strategies.ssl.MoCo.DEFAULTS), e.g. a queue
    # shorter than a small data set, so few negatives are stale copies of the positive
    hparams: dict[str, Any] | None = None


class SourceData(Strict):
    manifest: str  # relative to the config file, like source.manifest
    splits: list[str] = Field(default_factory=lambda: ["train"])  # the rows pretrained on (labels unused)
    max_rows: int | None = Field(None, ge=1)  # at most this many of those rows, evenly spread (profiles bound run time with it)


class SourceSpec(Strict):
    """A named initialisation for ``strategies[].source``: an encoder self-supervised on its own images.

    Beside the pipeline's ``source`` + ``pretrain`` (the default initialisation), a study can compare
    several: e.g. MoCo on every chest X-ray, on the target's unlabelled training images, or on both."""

    data: list[SourceData]
    image_size: int | None = None  # pretraining size of 2D images (default: the target's)
    # 3D volumes (e.g. MoCo on the target's own unlabelled training volumes; default: the target's)
    spacing: tuple[float, float, float] | None = None
    volume_shape: tuple[int, int, int] | None = None
    pretrain: PretrainSpec = Field(default_factory=lambda: PretrainSpec(mode="moco"))


class EncoderSpec(Strict):
    arch: str = "resnet18"
    stem_stride: int = Field(2, ge=1)
    lift: Literal["none", "i3d", "acs", "2.5d"] | None = None


class TrainSpec(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    patience: int | None = Field(5, ge=1)
    device: str = "auto"
    # autocast policy, recorded in every checkpoint and used alike by training, evaluation and medtl predict:
    # "auto" = bf16 on CUDA, fp32 on CPU; "off" = fp32 everywhere; "bf16" / "fp16" = that autocast dtype (in
    # channels-last memory); bf16 on a CPU with native bf16 is faster on a quiet machine (docs/performance.md)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # checkpoint selector of unsupervised-adaptation jobs (no target label): source validation loss, or a
    # label-free selector of medtl.adapt.selection; every one is logged each epoch for the regret table
    selector: Literal["source_loss", "source_accuracy", "dev", "entropy", "infomax", "snd"] = "source_loss"
    deterministic: bool = False
    # linear probes train on frozen-encoder features computed once (no per-epoch augmentation), fitted to
    # convergence by L-BFGS over a penalty sweep: feature_extraction's lr, weight_decay and epochs are then not
    # used, nor LP-FT's lp_lr and lp_fraction unless lp_epochs is set (the probe is its first phase)
    feature_cache: bool = True
    # at least this many optimiser steps per job: a small label fraction trains for more epochs (patience
    # grows alike), so every fraction gets a comparable budget in steps rather than in passes over its data
    min_steps: int | None = None
    # "all": every labelled validation image, whatever the label fraction; "same": the validation split cut
    # to the job's label fraction (stratified), as a study with 1% of the labels would really have
    val_fraction: Literal["all", "same"] = "all"
    # semi-supervised adaptation (labelled source beside a partly labelled target): the share of target draws
    # taken from the few labelled target rows, drawn with replacement, so most steps see some (0.5: half of each
    # target batch, on average); None: target rows as they come, where 10 labelled rows among thousands are
    # seen on few steps. Unsupervised adaptation has no labelled target rows and ignores it
    labelled_target_share: float | None = Field(None, gt=0, lt=1)


class StrategySpec(Strict):
    name: str
    lift: Literal["none", "i3d", "acs", "2.5d"] | None = None  # overrides encoder.lift for this run
    hparams: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = True  # False: random init (the scratch baseline)
    source: str | None = None  # a name in ``sources``: start from that encoder instead of the default pretraining
    label: str | None = None  # name in tables; default: name (+ lift)

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.name + (f"+{self.lift}" if self.lift and self.lift != "none" else "")


class SimilaritySpec(Strict):
    enabled: bool = True
    max_images: int = Field(200, ge=2)


class EvaluationSpec(Strict):
    bootstrap: int = Field(1000, ge=0)  # 0: no confidence intervals (the report says so)
    threshold_rule: str = "youden"

    @field_validator("threshold_rule")
    @classmethod
    def _rule(cls, v: str) -> str:
        # checked here, not after training: the report stage would be the first to refuse it
        if v not in RULES:
            raise ValueError(f"unknown threshold rule {v!r}; the rules are {', '.join(RULES)}")
        if v != "youden":  # every other rule needs a target, which a pipeline cannot set
            others = " and ".join(repr(r) for r in RULES if r != "youden")
            raise ValueError(f"{v!r} is not available in a pipeline: only 'youden' (the rules {others} need a "
                             "target, which a pipeline cannot set; apply them afterwards with medtl evaluate "
                             "--predictions RUN/predictions.csv --threshold-rule sensitivity --target 0.9)")
        return v


class PipelineConfig(Strict):
    name: str
    description: str = ""
    synthetic: bool = False  # the images are generated (medtl.data.synthetic), not patients': the report says so
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    source: DataSpec
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)
    target: DataSpec
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="label")])
    unlabelled_target: bool = False  # UDA: target labels are used for evaluation only
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    strategies: list[StrategySpec] = Field(min_length=1)
    label_fractions: list[float] = Field(default_factory=lambda: [1.0])
    # exactly these numbers of labelled training rows instead of fractions (e.g. [10, 20, 40] volumes), drawn
    # per label in proportion (at least one each); the reports record the fraction count / training rows
    label_counts: list[int] | None = None
    # the first N seeds only at these label fractions (e.g. {1.0: 1}: the full-label end of a learning curve;
    # fractions not in label_fractions are ignored, so a profile may change either)
    seeds_per_fraction: dict[float, int] = Field(default_factory=dict)
    similarity: SimilaritySpec = Field(default_factory=SimilaritySpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one label fraction")
        bad = [f for f in v if not 0 < f <= 1]
        if bad:
            raise ValueError(f"each label fraction must be in (0, 1], got {bad[0]:g}")
        if len(set(v)) != len(v):  # a repeated fraction runs the same jobs again, like a repeated seed
            raise ValueError(f"label fractions must differ from each other, got {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        outside = [s for s in v if not 0 <= s < 2**32]
        if outside:  # NumPy's and scikit-learn's generators take no other seed (refused here, not mid-run)
            raise ValueError(f"seeds must lie in [0, 2**32), got {outside}")
        if len(set(v)) != len(v):  # a repeated seed is the same run again, not another one
            raise ValueError(f"seeds must differ from each other, got {v}")
        return v

    @field_validator("label_counts")
    @classmethod
    def _counts(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(n < 1 for n in v) or len(set(v)) != len(v)):
            raise ValueError("label_counts: distinct whole numbers of at least 1")
        return sorted(v) if v else v

    @field_validator("strategies", mode="before")
    @classmethod
    def _names(cls, v):
        return [{"name": s} if isinstance(s, str) else s for s in v]

    @field_validator("strategies")
    @classmethod
    def _labels(cls, v: list[StrategySpec]) -> list[StrategySpec]:
        labels = [s.display for s in v]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:  # each job's folder and table row is named by it
            raise ValueError(f"strategy labels must differ; {twice} appear twice (give each a label)")
        return v

    @model_validator(mode="after")
    def _sources(self) -> "PipelineConfig":
        for i, spec in enumerate(self.strategies):
            if spec.source is not None and spec.source not in self.sources:
                known = ", ".join(self.sources) or "none defined"
                raise ValueError(f"strategies[{i}].source {spec.source!r} is not among sources ({known})")
            if spec.source is not None and not spec.pretrained:
                raise ValueError(f"strategies[{i}]: source and pretrained: false contradict each other")
        if self.label_counts and self.label_fractions != [1.0]:
            raise ValueError("give label_fractions or label_counts, not both")
        if self.unlabelled_target and (self.label_fractions != [1.0] or self.label_counts):
            raise ValueError("unlabelled_target hides every target label whatever the budget, so each label "
                             "fraction or count would run the same jobs again: leave label_fractions and "
                             "label_counts out")
        if not self.unlabelled_target and "selector" in self.train.model_fields_set:
            raise ValueError("train.selector chooses the checkpoints of unsupervised adaptation (unlabelled_target: "
                             "true); with target labels the checkpoint is chosen on the target's validation split: "
                             "leave it out")
        if self.label_counts and self.seeds_per_fraction:
            raise ValueError("seeds_per_fraction is keyed by label fraction; with label_counts every count runs "
                             "every seed")
        for where, spec in [("pretrain", self.pretrain)] + [(f"sources.{n}.pretrain", s.pretrain)
                                                            for n, s in self.sources.items()]:
            if spec.hparams and spec.mode != "moco":
                raise ValueError(f"{where}.hparams: only the self-supervised mode (moco) takes hyper-parameters")
        for fraction, n in self.seeds_per_fraction.items():
            if n < 1:
                raise ValueError(f"seeds_per_fraction: {fraction}: {n}: at least one seed")
        for name, src in self.sources.items():
            if src.pretrain.mode != "moco":  # several manifests, labels unused: the self-supervised path
                raise ValueError(f"sources.{name}: pretrain.mode must be moco")
        # that no target validation or test image is pretrained on is checked by image path before anything runs
        # (medtl.pipeline.checks): manifests of one collection share images under any name
        return self

    def seeds_at(self, fraction: float) -> list[int]:
        """The seeds a label fraction is run with."""
        return self.seeds[: self.seeds_per_fraction.get(fraction, len(self.seeds))]


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping: plain YAML keeps the last one silently,
    so an edited copy of a section (``similarity:`` twice) would quietly replace the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    earlier = first.get(key)
                except TypeError:  # an unhashable key: the base loader names it
                    continue
                if earlier is not None:
                    raise MedtlError(f"key {key!r} appears twice in one mapping (lines {earlier} and {line}); "
                                     "YAML would keep only the last: give it once")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def load_pipeline(path: str | Path, profile: str | None = None) -> PipelineConfig:
    """Read, apply ``profile`` and validate a pipeline YAML; errors name the file and key."""
    path = Path(path)
    if not path.exists():
        raise MedtlError("pipeline config not found", path)
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise MedtlError(f"not valid YAML: {err}", path) from None
    except MedtlError as err:  # a repeated key
        raise MedtlError(err.reason, path) from None
    if not isinstance(raw, dict):
        raise MedtlError("a pipeline config is a mapping of keys", path)
    profiles = raw.get("profiles") or {}
    if profile not in (None, "default") and profile not in profiles:
        raise MedtlError(f"unknown profile {profile!r}; this pipeline has {sorted(profiles) or 'none'}", path)
    chosen = None if profile in (None, "default") else profile
    config = _validated(_merge(raw, profiles[chosen]) if chosen else raw, path, chosen)
    _check_strategy_names(config, path, chosen)
    # a typo in a profile not run today (or in the default, which a profile may override) is refused today too
    others = {None: raw} if chosen else {}
    others.update({name: _merge(raw, o) for name, o in profiles.items() if name != chosen and isinstance(o, dict)})
    for name, merged in others.items():
        _check_strategy_names(_validated(merged, path, name), path, name)
    return config


def _check_strategy_names(config: PipelineConfig, path: Path, profile: str | None) -> None:
    from medtl.strategies.registry import get_strategy

    for spec in config.strategies:
        try:
            get_strategy(spec.name)
        except MedtlError as err:
            where = f"{path} (profile {profile})" if profile else path
            raise MedtlError(err.reason, f"{where}: strategies[{spec.display}]") from None


def _validated(raw: dict, path: Path, profile: str | None) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        problems = [_problem(e) for e in err.errors()]
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n  (+{len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        where = f"{path} (profile {profile})" if profile else path
        raise MedtlError(f"{len(problems)} problem(s) in the config:\n  {shown}{more}", where) from None


MAX_PROBLEMS_SHOWN = 10


def _problem(error: dict) -> str:
    """One validation error as a line naming the dotted key; an unknown key gets the nearest known one."""
    loc = error["loc"]
    if error["type"] != "extra_forbidden":
        msg = error["msg"].removeprefix("Value error, ")
        return f"{_dotted(loc)}: {msg}" if loc else msg  # a check across keys names them in its message
    known = _known_keys(loc[:-1])
    close = closest(str(loc[-1]), known)
    hint = f"did you mean {_dotted((*loc[:-1], close))!r}?" if close else f"known keys here: {', '.join(known)}"
    return f"{_dotted(loc)}: unknown key; {hint}"


def _dotted(loc) -> str:
    """``('strategies', 0, 'hparam')`` -> ``strategies[0].hparam``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _known_keys(loc: tuple) -> list[str]:
    """Field names of the config section at ``loc`` (list indices and dict keys step into the item type)."""
    model: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue  # the item of a list: the annotation was unwrapped below
        annotation = model.model_fields[part].annotation
        while get_args(annotation) and not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            annotation = next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)),
                              get_args(annotation)[-1])
        model = annotation
    return list(model.model_fields)
