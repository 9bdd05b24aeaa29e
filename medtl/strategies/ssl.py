"""Self-supervised contrastive pretraining: MoCo v2 (He et al. 2020; Chen et al. 2020).

Why MoCo v2 (and not SimCLR or BYOL): its negatives come from a queue of keys from earlier batches,
so the number of negatives does not depend on the batch size. SimCLR's only negatives are the other
images of the batch and it needs batches of thousands to work well; on 2 CPU cores the batch is 32-64.
BYOL needs no negatives either, but is known to be slower to start and more sensitive to its
schedules; a contrastive loss gives usable features within few epochs, which is what a short run on a
few thousand images can afford. The same code runs at full size on a GPU.

Pieces (plain modules, wired by one strategy; the trainer knows nothing of them):

- :class:`InfoNCELoss`: ``-log( exp(q.k+/t) / (exp(q.k+/t) + sum_n exp(q.n/t)) )`` on L2-normalised
  vectors, averaged over the batch;
- the query network ``head(encoder(x))`` (trained) and a key network, a momentum copy of it
  (``key = m * key + (1 - m) * query`` before every step, ``m`` rising from ``momentum`` to 1 on a
  cosine over training, as BYOL and solo-learn schedule it, so the keys settle as training ends);
- a queue of ``queue_size`` normalised keys (the negatives); the two views of every image swap roles
  (symmetric loss) and both keys are queued;
- "shuffle BN" on one device: the key batch is shuffled and run in ``key_groups`` separate chunks, so
  a key's batch-norm statistics come from a random part of the batch while its query's come from the
  whole local batch. That weakens the leak MoCo's shuffle BN prevents (a network finding its positive
  through the batch statistics instead of the image) but does not remove it as MoCo's independent
  per-GPU sub-batches do: each key's group lies inside its query's batch, and a batch of 2-3 images is
  one group.
  Under torchrun each process does the same on its share, and keys are gathered from all processes
  before they are queued.

The training state (momentum encoder, queue) is part of the strategy's state dict, so ``last.pt``
resumes exactly; ``model.pt`` holds only ``encoder.*`` and the projection ``head.*``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medtl.errors import MedtlError
from medtl.strategies.base import Strategy

SSL_MODES = ("moco",)


class InfoNCELoss(nn.Module):
    """InfoNCE with one positive per query and shared negatives; inputs are normalised here."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise MedtlError(f"temperature must be positive, got {temperature}", "temperature")
        self.temperature = float(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
        negatives = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.t()], dim=1) / self.temperature
        # the positive is class 0 of every row
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over torchrun processes in rank order (no gradient); ``x`` itself with one process.

    The processes may hold different numbers of rows (a last global batch of 5 splits 3 + 2): all_gather
    needs equal shapes, so the rows are padded to the largest count and the padding dropped after."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    n = torch.tensor([len(x)], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class MoCoStrategy(Strategy):
    """MoCo v2 on batches with two views (``image`` and ``image_2``, from medtl.data.views)."""

    name: ClassVar[str] = "moco"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "lr": 1e-3, "weight_decay": 1e-4,
        "temperature": 0.2,  # MoCo v2's value
        # start of the key network's momentum (cosine to 1). Its time constant 1 / (1 - m) must be short
        # beside the run: a CPU run has a few hundred steps, and at 0.99 its keys stayed those of a nearly
        # random network (60 steps on chest X-rays: loss 3.5 at 0.99, 2.3 at 0.9). Use 0.99-0.999 for
        # runs of tens of thousands of steps.
        "momentum": 0.9,
        "queue_size": 1024,  # negatives; well below the data set size, so few are stale copies of the positive
        "key_groups": 4,  # shuffle-BN chunks of the key batch
        "symmetric": True,
    }

    def __init__(self, encoder: nn.Module, head: nn.Module, hparams: dict[str, Any] | None = None):
        super().__init__(encoder, head, hparams)
        dim = getattr(head, "out_features", None)
        if dim is None:
            raise MedtlError("MoCo needs a projection head with out_features (medtl.models.ProjectionHead)", "head")
        if int(self.hparams["queue_size"]) < 1 or int(self.hparams["key_groups"]) < 1:
            raise MedtlError("queue_size and key_groups must be at least 1", "hparams")
        self.key_encoder = copy.deepcopy(encoder)
        self.key_head = copy.deepcopy(head)
        for p in (*self.key_encoder.parameters(), *self.key_head.parameters()):
            p.requires_grad_(False)  # moved by momentum, never by the optimiser (nor synchronised by DDP)
        self.loss_fn = InfoNCELoss(self.hparams["temperature"])
        self.register_buffer("queue", F.normalize(torch.randn(int(self.hparams["queue_size"]), dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def param_groups(self) -> list[dict[str, Any]]:
        params = [*self.encoder.parameters(), *self.head.parameters()]
        return [{"params": params, "lr": self.hparams["lr"], "weight_decay": self.hparams["weight_decay"]}]

    def momentum_at(self, progress: float) -> float:
        m0 = float(self.hparams["momentum"])
        return 1 - (1 - m0) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2

    @torch.no_grad()
    def _momentum_update(self, m: float) -> None:
        online = [*self.encoder.parameters(), *self.head.parameters()]
        keys = [*self.key_encoder.parameters(), *self.key_head.parameters()]
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, [p.detach() for p in online], alpha=1 - m)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys of ``x``, the batch shuffled and run in ``key_groups`` chunks (shuffle BN)."""
        n = x.shape[0]
        groups = max(1, min(int(self.hparams["key_groups"]), n // 2))  # chunks of at least two for batch norm
        perm = torch.randperm(n, device=x.device)
        parts = torch.tensor_split(perm, groups)  # near-equal parts (chunk() could leave a part of one)
        out = torch.cat([self.key_head(self.key_encoder(x[idx])) for idx in parts])
        k = torch.empty_like(out)
        k[perm] = out  # back to the batch's order
        return F.normalize(k.float(), dim=1)

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        k = _gather(k)
        size = self.queue.shape[0]
        if len(k) >= size:
            self.queue.copy_(k[-size:])
            self.queue_ptr.zero_()
            return
        idx = (self.queue_ptr + torch.arange(len(k), device=k.device)) % size  # wraps around
        self.queue[idx] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(k)) % size)

    def _views(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if "image_2" not in batch:
            raise MedtlError("MoCo needs two views per image (batch key 'image_2'): build the data with "
                             "medtl.data.views.views_dataset", "batch")
        return batch["image"], batch["image_2"]

    def _loss(self, x1, x2, k1, k2, negatives):
        q1 = self.head(self.encoder(x1))
        loss = self.loss_fn(q1, k2, negatives)
        pos = F.cosine_similarity(q1.detach().float(), k2, dim=1).mean()
        if self.hparams["symmetric"]:
            q2 = self.head(self.encoder(x2))
            loss = (loss + self.loss_fn(q2, k1, negatives)) / 2
        return loss, pos

    def training_loss(self, batch, target, progress):
        x1, x2 = self._views(batch)
        m = self.momentum_at(progress)
        self._momentum_update(m)
        k2 = self.keys(x2)
        k1 = self.keys(x1) if self.hparams["symmetric"] else None
        negatives = self.queue.clone()  # a copy: the queue changes below, before backward needs it
        loss, pos = self._loss(x1, x2, k1, k2, negatives)
        self._enqueue(k2 if k1 is None else torch.cat([k1, k2]))
        return loss, {"positive_cos": float(pos), "momentum": m}

    def validation_step(self, batch):
        x1, x2 = self._views(batch)
        k1, k2 = self.keys(x1), self.keys(x2)
        loss, _ = self._loss(x1, x2, k1, k2, self.queue.clone())  # the queue and key network are left as they are
        return loss, None


__all__ = ["SSL_MODES", "InfoNCELoss", "MoCoStrategy"]
