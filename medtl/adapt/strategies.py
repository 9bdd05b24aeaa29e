"""Domain adaptation strategies: one object per method, the same interface as fine-tuning.

Every strategy here trains ``encoder`` + ``head`` on a labelled source batch and a target batch
(``needs_target = True``), with one loss per step:

    loss = source_weight * CE(source logits, source labels)
         + target_weight * CE(target logits, target labels)   # labelled target rows only (label >= 0)
         + trade_off     * alignment(source features, target features, ...)

Two settings, chosen by whether a separate ``source_head`` is given:

(a) unsupervised DA (``source_head=None``): one head, one label set shared by both domains; target
    rows are usually all unlabelled (label -1 or no "label" key). A source or target label outside
    the head's classes is refused with a :class:`MedtlError`.
(b) semi-supervised heterogeneous transfer (``source_head`` given): the source task keeps its own
    head and label set, ``head`` is the target task's head trained on the few labelled target rows,
    and the alignment acts on the shared encoder's features. ``source_weight=0`` drops the source
    classification term (alignment only, e.g. a frozen-label source encoder).

``forward(x)`` always predicts with ``head`` (the target task). Hyper-parameters: each class's
``DEFAULTS`` is the one documented default place; configs override single keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medtl.adapt.discriminators import DomainDiscriminator
from medtl.adapt.grl import GradientReversalLayer
from medtl.adapt.losses import (
    ConditionalDomainAdversarialLoss,
    CORALLoss,
    DomainAdversarialLoss,
    MinimumClassConfusionLoss,
    MultipleKernelMMDLoss,
    conditioning_map,
)
from medtl.errors import MedtlError
from medtl.strategies.base import Strategy, register_strategy

_COMMON: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "encoder_lr_mult": 1.0,  # encoder lr = lr * this (e.g. 0.1 for a pretrained encoder)
    "source_weight": 1.0,  # weight of the source classification loss (0: none)
    "target_weight": 1.0,  # weight of the loss on labelled target rows (label >= 0)
}


def _num_outputs(head: nn.Module, in_features: int | None) -> int:
    """Width of the head's output: its ``out_features``, else a dry run on zeros."""
    if isinstance(getattr(head, "out_features", None), int):
        return head.out_features
    if in_features is None:
        raise MedtlError("cannot tell the number of classes: the head has no out_features", "head")
    ref = next(iter(head.parameters()), None)
    kwargs = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            out = head(torch.zeros(2, in_features, **kwargs))
    finally:
        head.train(was_training)
    return int(out.shape[1])


def _check_labels(labels: torch.Tensor, num_classes: int, what: str, allow_unlabelled: bool, shared: bool) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise MedtlError(f"{what} labels must be integer class indices, got dtype {labels.dtype}", what)
    low = -1 if allow_unlabelled else 0
    bad = (labels < low) | (labels >= num_classes)
    if bool(bad.any()):
        values = sorted({int(v) for v in labels[bad].tolist()})
        hint = (
            f"the source label set (0..{num_classes - 1}) is required for both domains in unsupervised DA"
            if shared
            else f"valid classes are 0..{num_classes - 1}"
        )
        unl = " (-1 marks an unlabelled row)" if allow_unlabelled else ""
        raise MedtlError(f"{what} labels {values} out of range: {hint}{unl}", f"{what} label")


class AdaptationStrategy(Strategy):
    """Shared training step of every DA strategy; subclasses define :meth:`alignment`."""

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, "trade_off": 1.0}
    needs_target: ClassVar[bool] = True
    needs_source_labels: ClassVar[bool] = True
    PRIOR: ClassVar[dict[str, float]] = {"gap": 0.8, "no_gap": 0.5}  # a large domain gap favours alignment

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        hparams: dict[str, Any] | None = None,
        source_head: nn.Module | None = None,
    ):
        super().__init__(encoder, head, hparams)
        self.source_head = source_head
        features = getattr(encoder, "out_features", None)
        self.features_dim: int | None = int(features) if features is not None else None

    # -- to override ------------------------------------------------------------------------------
    def alignment(
        self, f_s: torch.Tensor, f_t: torch.Tensor, logits_s: torch.Tensor, logits_t: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Alignment loss between the domains (None: no alignment term) and extra log values."""
        return None, {}

    # -- the interface ----------------------------------------------------------------------------
    @property
    def shared_labels(self) -> bool:
        return self.source_head is None

    def _require_features_dim(self) -> int:
        if self.features_dim is None:
            raise MedtlError(
                f"strategy {self.name!r} needs the encoder's feature width: give the encoder an "
                "`out_features` attribute",
                "encoder",
            )
        return self.features_dim

    def param_groups(self) -> list[dict[str, Any]]:
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        enc_ids = {id(p) for p in self.encoder.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in enc_ids]
        lr, wd = self.hparams["lr"], self.hparams["weight_decay"]
        groups = []
        if enc:
            groups.append(
                {"name": "encoder", "params": enc, "lr": lr * self.hparams["encoder_lr_mult"], "weight_decay": wd}
            )
        if rest:  # heads, discriminator
            groups.append({"name": "head", "params": rest, "lr": lr, "weight_decay": wd})
        return groups

    def _features(self, x_s: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x_s.shape[0] == 0 or x_t.shape[0] == 0:
            raise MedtlError(
                f"empty domain batch: source has {x_s.shape[0]} rows, target {x_t.shape[0]}", "batch"
            )
        if x_s.shape[1:] == x_t.shape[1:]:  # one pass: shared normalisation statistics, as in DANN
            f = self.encoder(torch.cat([x_s, x_t], 0))
            return f[: x_s.shape[0]], f[x_s.shape[0] :]
        return self.encoder(x_s), self.encoder(x_t)

    def forward_source(self, x: torch.Tensor) -> torch.Tensor:
        """Source-task logits (the source head in setting (b), else the one head)."""
        head = self.head if self.source_head is None else self.source_head
        return head(self.encoder(x))

    def training_loss(
        self, batch: dict[str, torch.Tensor], target: dict[str, torch.Tensor] | None, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if target is None or "image" not in target:
            raise MedtlError(f"strategy {self.name!r} adapts to a target domain: it needs a target batch", "target")
        if "image" not in batch:
            raise MedtlError("source batch has no 'image'", "batch")
        f_s, f_t = self._features(batch["image"], target["image"])
        logits_t = self.head(f_t)
        logits_s = self.head(f_s) if self.source_head is None else self.source_head(f_s)
        if logits_t.dim() != 2 or logits_t.shape[1] < 2 or logits_s.dim() != 2 or logits_s.shape[1] < 2:
            raise MedtlError(
                f"domain adaptation strategies train classification heads ((B, K >= 2) logits), got "
                f"{tuple(logits_s.shape)} and {tuple(logits_t.shape)}",
                "head",
            )
        hp = self.hparams
        loss = logits_t.new_zeros((), dtype=torch.float32)
        log: dict[str, float] = {}

        if hp["source_weight"] > 0:
            y_s = batch.get("label")
            if y_s is None:
                raise MedtlError("source batch has no 'label' (set source_weight=0 to train without)", "batch")
            y_s = y_s.to(logits_s.device).long() if not y_s.dtype.is_floating_point else y_s
            _check_labels(y_s, logits_s.shape[1], "source", allow_unlabelled=False, shared=False)
            ce_s = F.cross_entropy(logits_s.float(), y_s)
            loss = loss + hp["source_weight"] * ce_s
            log["source_ce"] = float(ce_s.detach())

        y_t = target.get("label")
        if y_t is not None:
            y_t = y_t.to(logits_t.device)
            if not y_t.dtype.is_floating_point:
                y_t = y_t.long()
            _check_labels(y_t, logits_t.shape[1], "target", allow_unlabelled=True, shared=self.shared_labels)
            labelled = y_t >= 0
            log["target_labelled"] = float(labelled.sum())
            if hp["target_weight"] > 0 and bool(labelled.any()):
                ce_t = F.cross_entropy(logits_t[labelled].float(), y_t[labelled])
                loss = loss + hp["target_weight"] * ce_t
                log["target_ce"] = float(ce_t.detach())

        align, extra = self.alignment(f_s, f_t, logits_s, logits_t, progress)
        if align is not None:
            loss = loss + hp["trade_off"] * align
            log["align"] = float(align.detach())
        log.update(extra)
        log["loss"] = float(loss.detach())
        return loss, log


@register_strategy("joint")
class JointMultiTask(AdaptationStrategy):
    """Joint multi-task training: one shared encoder, a source head and a target head, trained together
    on both data sets with per-task loss weights; no explicit alignment term.

    Without ``source_head`` both tasks share ``head`` (one label set).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(_COMMON)
    PRIOR: ClassVar[dict[str, float]] = {"gap": 0.6, "no_gap": 0.5}  # no alignment term: less gain from a gap


class _AdversarialMixin:
    def _grl(self) -> GradientReversalLayer:
        return GradientReversalLayer(self.hparams["grl_max"], self.hparams["grl_gamma"], schedule=True)

    def _discriminator(self, in_features: int) -> nn.Module:
        hp = self.hparams
        return DomainDiscriminator(in_features, hp["disc_hidden"], hp["disc_layers"], hp["disc_dropout"])


_ADVERSARIAL = {
    "trade_off": 1.0,
    "grl_max": 1.0,  # lambda(p) = grl_max * (2 / (1 + exp(-grl_gamma p)) - 1), Ganin et al. 2016
    "grl_gamma": 10.0,
    "disc_hidden": 1024,
    "disc_layers": 2,
    "disc_dropout": 0.5,
}


@register_strategy("dann")
class DANN(_AdversarialMixin, AdaptationStrategy):
    """Domain-adversarial training (Ganin et al. 2016) with the warm-start reversal coefficient.

    ``discriminator`` replaces the default MLP on pooled features, e.g. a
    :class:`~medtl.adapt.discriminators.ConvDomainDiscriminator` when the encoder outputs feature maps
    (and the head pools them).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, **_ADVERSARIAL}

    def __init__(self, encoder, head, hparams=None, source_head=None, discriminator: nn.Module | None = None):
        super().__init__(encoder, head, hparams, source_head)
        if discriminator is None:
            discriminator = self._discriminator(self._require_features_dim())
        self.domain_loss = DomainAdversarialLoss(discriminator, self._grl())

    def alignment(self, f_s, f_t, logits_s, logits_t, progress):
        coeff = self.domain_loss.grl.set_progress(progress)
        loss = self.domain_loss(f_s, f_t)
        return loss, {"grl_coeff": coeff, "domain_acc": self.domain_loss.domain_accuracy}


@register_strategy("cdan")
class CDAN(_AdversarialMixin, AdaptationStrategy):
    """Conditional adversarial DA (Long et al. 2018): the discriminator sees features x predictions
    (multilinear map; randomized when ``F*K > max_map_dim``). Needs one shared label set."""

    DEFAULTS: ClassVar[dict[str, Any]] = {
        **_COMMON,
        **_ADVERSARIAL,
        "entropy_conditioning": False,  # True = CDAN+E
        "max_map_dim": 4096,
        "randomized_dim": 1024,
    }
    requires_shared_labels: ClassVar[bool] = True  # read by the recommender

    def __init__(self, encoder, head, hparams=None, source_head=None):
        super().__init__(encoder, head, hparams, source_head)
        if source_head is not None:
            raise MedtlError(
                "CDAN conditions on class predictions, so source and target must share one head and "
                "label set; use DANN, DAN, CORAL or MCC for heterogeneous transfer",
                "source_head",
            )
        features = self._require_features_dim()
        self.num_classes = _num_outputs(head, features)
        hp = self.hparams
        mapper, dim = conditioning_map(features, self.num_classes, hp["max_map_dim"], hp["randomized_dim"])
        self.domain_loss = ConditionalDomainAdversarialLoss(
            self._discriminator(dim), mapper, self._grl(), bool(hp["entropy_conditioning"])
        )

    def alignment(self, f_s, f_t, logits_s, logits_t, progress):
        coeff = self.domain_loss.grl.set_progress(progress)
        loss = self.domain_loss(logits_s, f_s, logits_t, f_t)
        return loss, {"grl_coeff": coeff, "domain_acc": self.domain_loss.domain_accuracy}


@register_strategy("cdan_e")
class CDANE(CDAN):
    """CDAN+E: CDAN with entropy conditioning (confident predictions weigh more)."""

    DEFAULTS: ClassVar[dict[str, Any]] = {**CDAN.DEFAULTS, "entropy_conditioning": True}


@register_strategy("dan")
class DAN(AdaptationStrategy):
    """Deep adaptation network (Long et al. 2015): multi-kernel Gaussian MMD between pooled features."""

    DEFAULTS: ClassVar[dict[str, Any]] = {
        **_COMMON,
        "trade_off": 1.0,
        "kernel_multipliers": [0.25, 0.5, 1.0, 2.0, 4.0],
        "base_bandwidth": None,  # None: mean pairwise squared distance of the batch
        "unbiased": False,
    }

    def __init__(self, encoder, head, hparams=None, source_head=None):
        super().__init__(encoder, head, hparams, source_head)
        hp = self.hparams
        self.mmd = MultipleKernelMMDLoss(hp["kernel_multipliers"], hp["base_bandwidth"], hp["unbiased"])

    def alignment(self, f_s, f_t, logits_s, logits_t, progress):
        return self.mmd(f_s, f_t), {}


@register_strategy("coral")
class DeepCORAL(AdaptationStrategy):
    """Deep CORAL (Sun and Saenko 2016): match second-order statistics of pooled features."""

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, "trade_off": 1.0}

    def __init__(self, encoder, head, hparams=None, source_head=None):
        super().__init__(encoder, head, hparams, source_head)
        self.coral = CORALLoss()

    def alignment(self, f_s, f_t, logits_s, logits_t, progress):
        return self.coral(f_s, f_t), {}


@register_strategy("mcc")
class MCC(AdaptationStrategy):
    """Minimum class confusion (Jin et al. 2020) on the target head's predictions."""

    DEFAULTS: ClassVar[dict[str, Any]] = {**_COMMON, "trade_off": 1.0, "temperature": 2.5}

    def __init__(self, encoder, head, hparams=None, source_head=None):
        super().__init__(encoder, head, hparams, source_head)
        self.mcc = MinimumClassConfusionLoss(self.hparams["temperature"])

    def alignment(self, f_s, f_t, logits_s, logits_t, progress):
        return self.mcc(logits_t), {}


ADAPTATION_STRATEGIES = {cls.name: cls for cls in (JointMultiTask, DANN, CDAN, CDANE, DAN, DeepCORAL, MCC)}
