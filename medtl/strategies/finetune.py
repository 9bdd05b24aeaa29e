"""Fine-tuning strategies, found by name (``get_strategy``); each works with any encoder, lifted or not.

=====================  ===========================================================================
``scratch``            baseline: encoder re-initialised at random (its architecture's own init),
                       everything trained
``full``               full fine-tuning: every parameter at ``lr``
``feature_extraction`` frozen encoder (kept in eval mode, so its norm statistics stay too), only the
                       head trains: a linear probe
``gradual_unfreeze``   head first; every ``epochs_per_stage`` epochs the next encoder stage down is
                       thawed (Howard & Ruder 2018)
``discriminative_lr``  encoder stage i of G (0 = input side) at ``lr * decay ** (G - i)``, head at ``lr``
``lp_ft``              linear probe at ``lp_lr`` for the first ``lp_epochs`` (default: ``lp_fraction`` of
                       training), then everything at ``lr`` (Kumar et al. 2022), on the rest of the run's
                       schedule; batch norm switches to batch statistics at the switch unless ``freeze_norm``
``l2sp``               full fine-tuning plus ``alpha/2 ||w - w0||^2`` toward the starting (pretrained)
                       encoder weights and ``beta/2 ||w_head||^2`` (Li et al. 2018); weight decay 0
=====================  ===========================================================================

Every strategy takes ``freeze_norm`` (default False): keep the encoder's normalisation layers in
eval mode, so their running statistics stay those of the source data (affine weights still train).
Frozen parameters are also kept in eval mode. Stages are ``medtl.models.layer_groups(encoder)``.
Load pretrained weights into the encoder *before* building the strategy (L2-SP records them then).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.models.encoders import build_encoder
from medtl.models.lift import layer_groups
from medtl.strategies.base import Strategy, register_strategy

_COMMON: dict[str, Any] = {"lr": 1e-3, "weight_decay": 1e-4, "freeze_norm": False}


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class FineTuneStrategy(Strategy):
    """Supervised loss on the labelled batch; subclasses decide what trains and at which rate."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(_COMMON)

    def stages(self) -> list[list[nn.Parameter]]:
        """Encoder parameters by stage, input side first (stray parameters join the first stage)."""
        groups = [list(g.parameters()) for g in layer_groups(self.encoder)]
        seen = {id(p) for g in groups for p in g}
        stray = [p for p in self.encoder.parameters() if id(p) not in seen]
        groups[0] = stray + groups[0]
        return groups

    def param_groups(self) -> list[dict[str, Any]]:
        lr, wd = self.hparams["lr"], self.hparams["weight_decay"]
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()), "lr": lr, "weight_decay": wd},
            {"name": "head", "params": list(self.head.parameters()), "lr": lr, "weight_decay": wd},
        ]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            # Frozen parts run as in evaluation: no batch statistics, no dropout, no running-stat updates.
            if not any(p.requires_grad for p in self.encoder.parameters()):
                self.encoder.eval()
            else:
                for g in layer_groups(self.encoder):
                    if not any(p.requires_grad for p in g.parameters()):
                        g.eval()
            if self.hparams["freeze_norm"]:
                for m in self.encoder.modules():
                    if isinstance(m, nn.modules.batchnorm._NormBase):
                        m.eval()
        return self

    def training_loss(self, batch, target, progress):
        loss, _ = self.supervised_loss(batch)
        return loss, {"task": float(loss.detach())}


@register_strategy("scratch")
class Scratch(FineTuneStrategy):
    """Random initialisation, full training: the no-transfer baseline."""

    # neutral: on this project's chest X-ray to brain MRI studies no transfer recipe beat scratch by its interval
    # at 1-100% of the labels (docs/results.md); a low prior ranked it last on a rule of thumb alone
    PRIOR: ClassVar[dict[str, float]] = {"few": 0.5, "many": 0.5}
    uses_pretrained: ClassVar[bool] = False

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        if hasattr(encoder, "config"):
            encoder = build_encoder(encoder.config)  # fresh weights with the architecture's own init
        else:
            for m in encoder.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        super().__init__(encoder, head, hparams)


@register_strategy("full")
class FullFineTune(FineTuneStrategy):
    """Every parameter trains at ``lr``."""

    PRIOR: ClassVar[dict[str, float]] = {"few": 0.5, "many": 0.8}


@register_strategy("feature_extraction")
class FeatureExtraction(FineTuneStrategy):
    """Frozen encoder, linear probe."""

    # few labels favour keeping the features, unless they come from far away: a linear probe on chest X-ray
    # features (proxy A-distance about 2 from brain MRI) was the weakest recipe at 1% of the tumour labels, one
    # on MoCo-on-MRI features among the best (docs/results.md)
    PRIOR: ClassVar[dict[str, float]] = {"few": 0.8, "many": 0.4, "far": 0.3}

    @classmethod
    def probe_first(cls, hparams):
        return "whole", hparams

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        super().__init__(encoder, head, hparams)
        _set_trainable(self.encoder, False)

    def param_groups(self):
        return [g for g in super().param_groups() if g["name"] == "head"]


@register_strategy("gradual_unfreeze")
class GradualUnfreeze(FineTuneStrategy):
    """Epoch e trains the head and the top ``e // epochs_per_stage`` encoder stages."""

    PRIOR: ClassVar[dict[str, float]] = {"few": 0.7, "many": 0.7}

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, "epochs_per_stage": 1}

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        super().__init__(encoder, head, hparams)
        if int(self.hparams["epochs_per_stage"]) < 1:
            raise MedtlError("epochs_per_stage must be >= 1", "hparams.epochs_per_stage")
        self.thawed = 0
        self._apply_thaw()

    def _apply_thaw(self) -> None:
        stages = self.stages()
        for i, params in enumerate(stages):
            for p in params:
                p.requires_grad_(i >= len(stages) - self.thawed)

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.thawed = min(len(self.stages()), epoch // int(self.hparams["epochs_per_stage"]))
        self._apply_thaw()

    def param_groups(self):
        lr, wd = self.hparams["lr"], self.hparams["weight_decay"]
        groups = [{"name": f"encoder.stage{i}", "params": ps, "lr": lr, "weight_decay": wd}
                  for i, ps in enumerate(self.stages())]
        return groups + [{"name": "head", "params": list(self.head.parameters()), "lr": lr, "weight_decay": wd}]


@register_strategy("discriminative_lr")
class DiscriminativeLR(FineTuneStrategy):
    """Learning rate decaying by ``decay`` per stage from the head down to the input."""

    PRIOR: ClassVar[dict[str, float]] = {"few": 0.7, "many": 0.7}

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, "decay": 0.5}

    def param_groups(self):
        lr, wd, decay = self.hparams["lr"], self.hparams["weight_decay"], self.hparams["decay"]
        stages = self.stages()
        groups = [{"name": f"encoder.stage{i}", "params": ps, "lr": lr * decay ** (len(stages) - i), "weight_decay": wd}
                  for i, ps in enumerate(stages)]
        return groups + [{"name": "head", "params": list(self.head.parameters()), "lr": lr, "weight_decay": wd}]


@register_strategy("lp_ft")
class LinearProbeThenFineTune(FineTuneStrategy):
    """Phase "lp": frozen encoder, head at ``lp_lr``; phase "ft": everything at ``lr``."""

    PRIOR: ClassVar[dict[str, float]] = {"few": 0.9, "many": 0.7}

    DEFAULTS: ClassVar[dict[str, Any]] = {
        **_COMMON, "lr": 1e-4, "lp_lr": 1e-2, "lp_epochs": None, "lp_fraction": 0.5,
    }

    @classmethod
    def probe_first(cls, hparams):
        # the first phase as Kumar et al. (2022) run it, when lp_epochs leaves it open: a probe fitted to
        # convergence, then every epoch fine-tunes the whole model
        return ("then_train", {**hparams, "lp_epochs": 0}) if hparams.get("lp_epochs") is None else None

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        super().__init__(encoder, head, hparams)
        self.phase = "lp"
        _set_trainable(self.encoder, False)

    def lp_epochs(self, total_epochs: int) -> int:
        n = self.hparams["lp_epochs"]
        return int(n) if n is not None else max(1, round(total_epochs * float(self.hparams["lp_fraction"])))

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.phase = "lp" if epoch < self.lp_epochs(total_epochs) else "ft"
        _set_trainable(self.encoder, self.phase == "ft")

    def param_groups(self):
        lr, wd = self.hparams["lr"], self.hparams["weight_decay"]
        head_lr = self.hparams["lp_lr"] if self.phase == "lp" else lr
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()), "lr": lr, "weight_decay": wd},
            {"name": "head", "params": list(self.head.parameters()), "lr": head_lr, "weight_decay": wd},
        ]


class _Reference(nn.Module):
    """Copies of the starting weights as buffers (saved with the strategy, so resume keeps them)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.names = [n for n, _ in module.named_parameters()]
        for n, p in module.named_parameters():
            self.register_buffer(n.replace(".", "__"), p.detach().clone())

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))


@register_strategy("l2sp")
class L2SP(FineTuneStrategy):
    """Full fine-tuning regularised toward the pretrained encoder weights (L2-SP)."""

    PRIOR: ClassVar[dict[str, float]] = {"few": 0.8, "many": 0.6}

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, "weight_decay": 0.0, "alpha": 0.01, "beta": 0.01}

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        super().__init__(encoder, head, hparams)
        self.reference = _Reference(self.encoder)

    def penalty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum ||w - w0||^2 over the encoder, sum ||w||^2 over the head): unweighted."""
        sp = sum(((p.float() - self.reference.get(n).float()) ** 2).sum() for n, p in self.encoder.named_parameters())
        head = sum((p.float() ** 2).sum() for p in self.head.parameters())
        return sp, head

    def training_loss(self, batch, target, progress):
        task, _ = self.supervised_loss(batch)
        sp, head = self.penalty()
        loss = task + 0.5 * self.hparams["alpha"] * sp + 0.5 * self.hparams["beta"] * head
        return loss, {"task": float(task.detach()), "l2sp": float(sp.detach()), "head_l2": float(head.detach())}
