"""Self-supervised pretraining objective: the transfer (variational) autoencoder of the spec.

Not in the fine-tuning registry (it trains no classifier); ``medtl.engine.pretrain`` uses it directly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from medtl.errors import MedtlError
from medtl.models.autoencoder import vae_loss
from medtl.strategies.base import Strategy


class AutoencoderStrategy(Strategy):
    """``loss = MSE(x, g(f(x))) + kl_weight * KL``; the head is a :class:`medtl.models.VAEHead`."""

    name: ClassVar[str] = "autoencoder"
    DEFAULTS: ClassVar[dict[str, Any]] = {"lr": 1e-3, "weight_decay": 1e-4, "kl_weight": 1e-3}

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        if getattr(head, "task", None) != "reconstruction":
            raise MedtlError("the autoencoder strategy needs a VAEHead (medtl.models.VAEHead)", "head")
        super().__init__(encoder, head, hparams)

    def _loss(self, batch):
        x = batch["image"]
        recon, mu, logvar = self(x)
        return vae_loss(x, recon, mu, logvar, float(self.hparams["kl_weight"]))

    def training_loss(self, batch, target, progress):
        return self._loss(batch)

    def validation_step(self, batch):
        loss, _ = self._loss(batch)
        return loss, None
