"""Pipeline configs: YAML validated into typed objects, with profiles.

A pipeline names its source data and pretraining, its target data and tasks, the encoder and how it
is lifted, the transfer strategies, label fractions and seeds. ``profiles`` hold overrides merged
over the base config (``quick`` for CI, ``cpu`` for 2-core runs; the base is sized for one GPU).
Unknown keys and wrong types are refused with the key's dotted path named.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medtl.errors import MedtlError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    manifest: str  # relative to the repository (or absolute); paths inside it are relative to the data root
    preset: Literal["cxr", "mri2d", "mri3d"] | None = None
    image_size: int | None = None
    spacing: tuple[float, float, float] | None = None
    volume_shape: tuple[int, int, int] | None = None
    max_per_split: int | None = None  # cap rows per split (profiles use it to bound run time)

    def preset_options(self) -> dict[str, Any]:
        opts = {"image_size": self.image_size, "spacing": self.spacing, "volume_shape": self.volume_shape}
        return {k: v for k, v in opts.items() if v is not None}


class TaskSpec(Strict):
    name: str
    kind: Literal["classification", "regression"] = "classification"
    label_column: str = "label"
    label_map: dict[str, str] | None = None  # e.g. merge tumour types into "tumor"


class PretrainSpec(Strict):
    mode: Literal["supervised", "autoencoder"] = "supervised"
    checkpoint: str | None = None  # use this medtl checkpoint instead of training
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-3


class EncoderSpec(Strict):
    arch: str = "resnet18"
    stem_stride: int = 2
    lift: Literal["none", "i3d", "acs", "2.5d"] | None = None


class TrainSpec(Strict):
    epochs: int = 20
    batch_size: int = 32
    num_workers: int = 0
    patience: int | None = 5
    device: str = "auto"
    deterministic: bool = False
    # linear probes train on frozen-encoder features computed once (no per-epoch augmentation)
    feature_cache: bool = True


class StrategySpec(Strict):
    name: str
    lift: Literal["none", "i3d", "acs", "2.5d"] | None = None  # overrides encoder.lift for this run
    hparams: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = True  # False: random init (the scratch baseline)
    label: str | None = None  # name in tables; default: name (+ lift)

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.name + (f"+{self.lift}" if self.lift and self.lift != "none" else "")


class SimilaritySpec(Strict):
    enabled: bool = True
    max_images: int = 200
    compare: list[str] = Field(default_factory=list)  # extra manifests to compare with the target


class EvaluationSpec(Strict):
    bootstrap: int = 1000
    threshold_rule: str = "youden"


class PipelineConfig(Strict):
    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    source: DataSpec
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)
    target: DataSpec
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="label")])
    unlabelled_target: bool = False  # UDA: target labels are used for evaluation only
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    strategies: list[StrategySpec]
    label_fractions: list[float] = Field(default_factory=lambda: [1.0])
    similarity: SimilaritySpec = Field(default_factory=SimilaritySpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("each label fraction must be in (0, 1]")
        return v

    @field_validator("strategies", mode="before")
    @classmethod
    def _names(cls, v):
        return [{"name": s} if isinstance(s, str) else s for s in v]


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_pipeline(path: str | Path, profile: str | None = None) -> PipelineConfig:
    """Read, apply ``profile`` and validate a pipeline YAML; errors name the file and key."""
    path = Path(path)
    if not path.exists():
        raise MedtlError("pipeline config not found", path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MedtlError(f"not valid YAML: {err}", path) from None
    if not isinstance(raw, dict):
        raise MedtlError("a pipeline config is a mapping of keys", path)
    profiles = raw.get("profiles") or {}
    if profile not in (None, "default"):
        if profile not in profiles:
            raise MedtlError(f"unknown profile {profile!r}; this pipeline has {sorted(profiles) or 'none'}", path)
        raw = _merge(raw, profiles[profile])
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise MedtlError(f"config key {key!r}: {first['msg']} ({len(err.errors())} problem(s) in all)", path) from None
    return config
