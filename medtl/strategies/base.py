"""One interface over every transfer method, found by name in a registry.

The trainer knows nothing method-specific: it asks a strategy for its optimiser parameter groups,
tells it when an epoch starts (for schedules such as gradual unfreezing or LP-FT's phase switch),
and asks it for the loss of one step. Fine-tuning strategies use only the labelled ``batch``; domain
adaptation strategies also use ``target`` (an unlabelled or sparsely labelled target batch).

Batches are dictionaries as MONAI's dictionary transforms produce them: ``batch["image"]`` is a
``(B, C, *spatial)`` tensor and ``batch["label"]`` a ``(B,)`` long tensor (or float for regression).

Hyper-parameters have one documented default place: each class's ``DEFAULTS`` dictionary; a config
overrides single keys and unknown keys are refused.

Strategies register themselves here with :func:`register_strategy`; look them up by name through
:mod:`medtl.strategies.registry`, which imports every module that defines one.
"""

from __future__ import annotations

import contextlib
import math

from typing import Any, ClassVar

import torch
from torch import nn

from medtl.errors import MedtlError, unknown
from medtl.models.heads import task_loss

STRATEGIES: dict[str, type["Strategy"]] = {}


def register_strategy(name: str):
    """Class decorator adding a strategy to the registry under ``name`` (read it through registry.py)."""

    def wrap(cls: type["Strategy"]) -> type["Strategy"]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return wrap


class Strategy(nn.Module):
    """Base class: an encoder (features), a head (predictions) and the rule that trains them."""

    name: ClassVar[str] = "base"
    DEFAULTS: ClassVar[dict[str, Any]] = {"lr": 1e-3, "weight_decay": 1e-4}
    needs_target: ClassVar[bool] = False  # True for domain adaptation: the trainer feeds target batches
    # What the method needs and how it is primed (read by the pipeline runner and the recommender):
    needs_source_labels: ClassVar[bool] = False  # trains on labelled source batches (beside the target's)
    requires_shared_labels: ClassVar[bool] = False  # conditions on classes: one label set with the source
    uses_pretrained: ClassVar[bool] = True  # False: the method re-initialises the encoder it is given
    # Rule-of-thumb prior in [0, 1] for the recommender (not a measurement): "few" / "many" target labels
    # (fewer than FEW_LABELS or not), or, where the domain gap decides, "gap" / "no_gap" (proxy A-distance
    # above LARGE_GAP or not); "far" caps the few/many value across a large gap.
    PRIOR: ClassVar[dict[str, float]] = {"few": 0.5, "many": 0.5}
    FEW_LABELS: ClassVar[int] = 200
    LARGE_GAP: ClassVar[float] = 1.5

    @classmethod
    def prior(cls, n_labelled: int, pad: float | None) -> float:
        """How well the method family is expected to suit a target with ``n_labelled`` labelled cases at
        proxy A-distance ``pad`` from the source (see ``PRIOR``)."""
        if "gap" in cls.PRIOR:
            return cls.PRIOR["gap"] if (pad or 0.0) > cls.LARGE_GAP else cls.PRIOR["no_gap"]
        value = cls.PRIOR["few"] if n_labelled < cls.FEW_LABELS else cls.PRIOR["many"]
        if "far" in cls.PRIOR and (pad or 0.0) > cls.LARGE_GAP:
            value = min(value, cls.PRIOR["far"])
        return value

    @classmethod
    def probe_first(cls, hparams: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """Whether a linear probe fitted to convergence on cached frozen features primes this method:
        None (it does not), ``("whole", hparams)`` (the probe is the whole method) or ``("then_train",
        hparams for the training that follows)``."""
        return None

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any], where: str = "hparams") -> None:
        """Refuse a hyper-parameter this strategy does not have (with the one it most likely meant), or a value of
        another kind than its default's (a number, a whole number, true/false, a list of numbers), or one out of its
        range (negative; a whole number below 1; a fraction above 1; a temperature, scale or bandwidth of 0)."""
        for key in sorted(set(hparams) - set(cls.DEFAULTS)):
            raise unknown("hyper-parameter", key, sorted(cls.DEFAULTS), where, of=f" for {cls.name}")
        for key, value in hparams.items():
            default = cls.DEFAULTS[key]
            positive = "temperature" in key or "bandwidth" in key  # a learning rate of 0 is allowed: no move
            if isinstance(default, list) or (default is None and value is not None):
                # a list of scales (MMD kernel multipliers) or a setting with an automatic default (a bandwidth, the
                # probe's epochs): numbers, else a division by zero or a type error deep inside the loss
                values = value if isinstance(default, list) else [value]
                if not isinstance(values, list) or not values or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        and (v > 0 if positive or isinstance(default, list) else v >= 0) for v in values):
                    kind = ("a non-empty list of positive numbers" if isinstance(default, list) else
                            f"{'a positive' if positive else 'a non-negative'} number, or null for its automatic value")
                    raise MedtlError(f"{key} of {cls.name} is {kind}, got {value!r}", where)
                continue
            if isinstance(default, bool) and not isinstance(value, bool):
                raise MedtlError(f"{key} of {cls.name} is true or false, got {value!r}", where)
            number = isinstance(default, (int, float)) and not isinstance(default, bool)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and not is_number:
                hint = ""
                if isinstance(value, str):
                    with contextlib.suppress(ValueError):
                        float(value)
                        hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
                raise MedtlError(f"{key} of {cls.name} is a number, got {value!r}{hint}", where)
            if not is_number:
                continue
            if not math.isfinite(value):
                raise MedtlError(f"{key} of {cls.name} must be a finite number, got {value!r}", where)
            if isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
                raise MedtlError(f"{key} of {cls.name} is a whole number, got {value!r}", where)
            if isinstance(default, int) and value < 1:  # layers, widths, sizes and counts
                raise MedtlError(f"{key} of {cls.name} must be at least 1, got {value!r}", where)
            if value < 0 or (positive and value <= 0):
                raise MedtlError(f"{key} of {cls.name} must be {'positive' if positive else 'at least 0'}, "
                                 f"got {value!r}", where)
            if ("fraction" in key or "dropout" in key) and value > 1:
                raise MedtlError(f"{key} of {cls.name} is a fraction of 0 to 1, got {value!r}", where)

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        super().__init__()
        self.check_hparams(hparams or {})
        self.hparams = {**self.DEFAULTS, **(hparams or {})}
        self.encoder = encoder
        self.head = head

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups (each with its own ``lr``).

        The trainer builds its optimiser from the first call and calls again at every epoch start
        (after :meth:`on_epoch_start`): the same parameters in the same order each time, but the
        ``lr`` (and ``weight_decay``) values are re-read, so a schedule may change them per epoch
        (LP-FT's phase switch). Parameters frozen with ``requires_grad=False`` may stay listed: they
        get no gradient, so the optimiser leaves them alone.
        """
        return [{"params": list(self.parameters()), "lr": self.hparams["lr"],
                 "weight_decay": self.hparams.get("weight_decay", 0.0)}]

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Hook for schedules (unfreezing, phase switches). Default: nothing."""

    def training_loss(
        self, batch: dict[str, torch.Tensor], target: dict[str, torch.Tensor] | None, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one step and named parts for the log. ``progress`` runs from 0 to 1 over training."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions (logits) for images ``x``."""
        return self.head(self.encoder(x))

    # -- shared helpers: supervised_loss for subclasses; the trainer validates with validation_step --
    def supervised_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's task loss on a labelled batch, and the logits it came from.

        Uses ``head.loss`` when the head has one (medtl.models.heads.Head), else cross-entropy for
        integer labels and mean squared error for float labels.
        """
        if "label" not in batch:
            raise MedtlError("batch has no 'label'", "batch")
        logits = self(batch["image"])
        label = batch["label"].to(logits.device)
        loss = self.head.loss(logits, label) if hasattr(self.head, "loss") else task_loss(logits, label)
        return loss, logits

    def validation_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validation loss of one batch and the logits for metrics (None when there are no class scores).

        Default: the plain task loss, without training-only terms (penalties, alignment).
        """
        return self.supervised_loss(batch)
