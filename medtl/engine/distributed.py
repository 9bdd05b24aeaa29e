"""Distributed runs on PyTorch's own engine: ``torchrun`` processes, DDP, sharded data and inference.

The trainer uses this module by itself when a process was started by ``torchrun`` (the environment
variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``); scripts can use the same pieces directly:

- :func:`torchrun_env` reads those variables; :func:`init_distributed` starts the process group
  (``nccl`` on CUDA, ``gloo`` on CPU) once, pins each process to GPU ``LOCAL_RANK`` and quietens the
  ``medtl`` logger on ranks other than 0; :func:`current` tells the rank and world size in use.
- :func:`shard_loader` turns a single-process ``DataLoader`` into this rank's part of it: each global
  batch the original loader would produce is split across the ranks (rank r takes items r, r+W, ...),
  so W processes see, per step, exactly the items one process would (see docs/distributed.md).
- :func:`predict_sharded` / :func:`evaluate_sharded`: every rank predicts a contiguous block of the
  loader's batches, the pieces are gathered (``all_gather_object``) and merged in the original order:
  the merged output is the single-process :func:`medtl.engine.evaluate.predict` output.
- :func:`sync_buffers` / :func:`broadcast_module_state` keep the non-parameter state of the replicas
  equal (batch-norm running statistics averaged across ranks, everything else from rank 0).
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medtl.errors import MedtlError

log = logging.getLogger(__name__)
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> DistContext | None:
    """The rank and world size ``torchrun`` set in the environment, or None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise MedtlError(f"torchrun variables are not integers: "
                         f"{ {k: os.environ.get(k) for k in TORCHRUN_VARS} }", "environment") from None
    if world < 1 or not 0 <= rank < world:
        raise MedtlError(f"RANK={rank} does not fit WORLD_SIZE={world}", "environment")
    return DistContext(rank, world, local)


def require_single_process(command: str) -> None:
    """Refuse ``command`` under torchrun with more than one process: its steps after training (files,
    predictions, reports) would run once per rank on the same files."""
    env = torchrun_env()
    if env is not None and env.world_size > 1:
        raise MedtlError(f"{command} runs in one process; under torchrun ({env.world_size} processes) use "
                         "medtl pretrain, whose model.pt feeds --init or a pipeline's pretrain.checkpoint", "torchrun")


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def current() -> DistContext:
    """The process group in use (initialised by :func:`init_distributed` or by the caller), else one process."""
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return DistContext()
    env = torchrun_env()
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank if env else 0, dist.get_backend())


_OWNED = False  # whether this module started the process group (and so destroys it at exit)


def _destroy() -> None:
    dist = _dist()
    if _OWNED and dist is not None and dist.is_initialized():
        dist.destroy_process_group()


def default_backend(device: str | torch.device = "auto") -> str:
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return "nccl" if kind == "cuda" else "gloo"


def init_distributed(device: str | torch.device = "auto", backend: str | None = None,
                     quiet_other_ranks: bool = True) -> DistContext:
    """Start the process group when running under torchrun with more than one process; idempotent.

    ``backend``: None picks ``nccl`` for CUDA devices and ``gloo`` otherwise. On CUDA each process is
    pinned to GPU ``LOCAL_RANK``. Outside torchrun (or with one process) nothing starts and the
    returned context says rank 0 of 1.
    """
    global _OWNED
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return current()
    env = torchrun_env()
    if env is None or env.world_size == 1:
        return DistContext(backend=None)
    if dist is None:
        raise MedtlError("this PyTorch build has no torch.distributed; cannot run under torchrun", "environment")
    backend = backend or default_backend(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise MedtlError("the nccl backend needs CUDA; use gloo on CPU", "train.dist_backend")
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    _OWNED = True
    atexit.register(_destroy)
    if quiet_other_ranks and env.rank != 0:
        logging.getLogger("medtl").setLevel(logging.WARNING)  # one copy of the info messages, from rank 0
    log.info("process group started: %s, %d processes", backend, env.world_size)
    return DistContext(env.rank, env.world_size, env.local_rank, backend)


def comm_device(ctx: DistContext | None = None) -> torch.device:
    """The device tensors for collectives live on (the current GPU for nccl, else the CPU)."""
    ctx = ctx or current()
    if ctx.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- collectives (no-ops for one process) ------------------------------------------------------------
def barrier(ctx: DistContext | None = None) -> None:
    ctx = ctx or current()
    if ctx.enabled:
        _dist().barrier()


def all_gather_object(obj: Any, ctx: DistContext | None = None) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0, ctx: DistContext | None = None) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    ctx = ctx or current()
    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == src else None]
    _dist().broadcast_object_list(box, src=src, device=comm_device(ctx) if ctx.backend == "nccl" else None)
    return box[0]


def all_reduce_sum(values: list[float], ctx: DistContext | None = None) -> list[float]:
    """Element-wise sums over ranks (float64)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device(ctx))
    _dist().all_reduce(t)
    return t.cpu().tolist()


def broadcast_module_state(module: nn.Module, src: int = 0, ctx: DistContext | None = None) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s (in place)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    dist = _dist()
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            if isinstance(t, torch.Tensor):
                dist.broadcast(t.data, src)


def sync_buffers(module: nn.Module, ctx: DistContext | None = None) -> None:
    """Make the replicas' buffers equal: batch-norm running means and variances become their mean
    over ranks (with equal per-rank batches the running mean is then exactly the one a single process
    would keep over the global batches; the variance misses the spread between the ranks' means),
    every other buffer becomes rank 0's. DDP is used with ``broadcast_buffers=False`` and this runs
    once per epoch, before validation and checkpoints."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    dist = _dist()
    averaged: set[int] = set()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                for t in (m.running_mean, m.running_var):
                    if t is not None and t.is_floating_point() and id(t) not in averaged:
                        dist.all_reduce(t)
                        t.div_(ctx.world_size)
                        averaged.add(id(t))
        for t in module.buffers():
            if id(t) not in averaged:
                dist.broadcast(t, 0)


# -- data ---------------------------------------------------------------------------------------------
class ShardedBatchSampler:
    """Rank ``rank``'s part of each global batch of ``batch_sampler``: items ``rank``, ``rank + W``, ...

    Every rank iterates the same global batches (the trainer seeds the samplers identically), so the
    union of the ranks' batches at each step is the single-process batch. A global batch with fewer
    items than ranks (a short last batch) is skipped, since some rank would get nothing.
    """

    def __init__(self, batch_sampler, rank: int, world_size: int):
        if batch_sampler is None:
            raise MedtlError("cannot shard a loader without batches (batch_size=None)", "loader")
        batch_size = getattr(batch_sampler, "batch_size", None)
        if batch_size is not None and batch_size < world_size:
            raise MedtlError(f"a global batch of {batch_size} cannot be split over {world_size} processes: "
                             f"use a batch size of at least {world_size}", "batch_size")
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size
        self.skipped = 0

    def __iter__(self):
        for batch in self.batch_sampler:
            batch = list(batch)
            if len(batch) < self.world_size:
                self.skipped += 1
                log.warning("skipping a global batch of %d item(s): fewer than the %d processes", len(batch),
                            self.world_size)
                continue
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.batch_sampler)
        bs, sampler = getattr(self.batch_sampler, "batch_size", None), getattr(self.batch_sampler, "sampler", None)
        if bs and not getattr(self.batch_sampler, "drop_last", False) and sampler is not None and n:
            last = len(sampler) % bs
            if 0 < last < self.world_size:
                n -= 1
        return n


class RankWorkerInit:
    """The loader's own ``worker_init_fn``, then (ranks > 0) a reseed of the worker by rank: torch,
    ``random``, NumPy and the MONAI transforms. Without it, worker k of every rank starts from the same
    seed (it comes from the data stream the ranks share) and draws the same augmentations."""

    def __init__(self, inner, rank: int):
        self.inner, self.rank = inner, rank

    def __call__(self, worker_id: int) -> None:
        if self.inner is not None:
            self.inner(worker_id)
        if self.rank == 0:
            return  # rank 0's workers are seeded as in a single process
        import random

        import numpy as np

        info = torch.utils.data.get_worker_info()
        seed = (info.seed + 1_000_003 * self.rank) % 2**32
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        from monai.data.utils import set_rnd

        set_rnd(info.dataset, seed)


def _rebuild(loader, batch_sampler, rank: int | None = None):
    from torch.utils.data import DataLoader

    init = loader.worker_init_fn
    if rank and loader.num_workers > 0:
        init = RankWorkerInit(init, rank)
    kwargs: dict[str, Any] = {
        "batch_sampler": batch_sampler, "num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory, "timeout": loader.timeout, "worker_init_fn": init,
        "generator": loader.generator,  # the same object: it draws in the same order as the original loader
    }
    if loader.num_workers > 0:
        kwargs.update(multiprocessing_context=loader.multiprocessing_context, prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers)
    return DataLoader(loader.dataset, **kwargs)


def is_distributed_loader(loader) -> bool:
    from torch.utils.data.distributed import DistributedSampler

    return isinstance(getattr(loader, "sampler", None), DistributedSampler) or isinstance(
        getattr(loader, "batch_sampler", None), (DistributedSampler, ShardedBatchSampler))


def shard_loader(loader, ctx: DistContext | None = None):
    """This rank's part of ``loader`` (whose batch size is the global batch); the loader itself when it
    already is per-rank (a ``DistributedSampler``) or for one process."""
    from torch.utils.data import IterableDataset

    ctx = ctx or current()
    if not ctx.enabled or is_distributed_loader(loader):
        return loader
    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        raise MedtlError("an iterable-style dataset cannot be sharded by the trainer: give each rank its own "
                         "part of the stream", "loader")
    return _rebuild(loader, ShardedBatchSampler(loader.batch_sampler, ctx.rank, ctx.world_size), ctx.rank)


def global_batches(loader) -> list[list[int]]:
    """The index batches one process would read from ``loader`` (a ``DistributedSampler`` is replaced by
    the dataset in order, batched by the loader's batch size)."""
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(getattr(loader, "sampler", None), DistributedSampler) and loader.batch_size:
        n, b = len(loader.dataset), loader.batch_size
        return [list(range(i, min(i + b, n))) for i in range(0, n, b)]
    if getattr(loader, "batch_sampler", None) is None:
        raise MedtlError("sharded inference needs a loader with batches (batch_size=None is not supported)", "loader")
    return [list(b) for b in loader.batch_sampler]


def _block(n: int, rank: int, world: int) -> slice:
    return slice(rank * n // world, (rank + 1) * n // world)


@torch.no_grad()
def predict_sharded(model: nn.Module, loader, device: str | torch.device = "cpu",
                    amp_dtype: torch.dtype | None = None, progress: bool = False,
                    ctx: DistContext | None = None) -> dict[str, Any]:
    """:func:`medtl.engine.evaluate.predict` split over the ranks and merged: call it on every rank.

    Rank 0 lists the loader's batches (and shares the list, so a shuffling sampler cannot make ranks
    disagree); rank r predicts the r-th contiguous block of whole batches; the pieces are gathered on
    every rank and concatenated in rank order, which is the original order. Every batch is computed
    as in a single process, so the merged result equals the single-process one (bitwise, given the
    same kernels and thread settings). One process: plain ``predict``.
    """
    from medtl.engine.evaluate import assemble, collect, merge_collected, predict

    ctx = ctx or current()
    if not ctx.enabled:
        return predict(model, loader, device, amp_dtype, progress)
    from torch.utils.data import IterableDataset

    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        raise MedtlError("sharded inference needs a map-style dataset (indexable), not an iterable one", "loader")
    batches = broadcast_object(global_batches(loader) if ctx.is_main else None, 0, ctx)
    mine = batches[_block(len(batches), ctx.rank, ctx.world_size)]
    part = collect(model, _rebuild(loader, mine), device, amp_dtype, progress and ctx.is_main)
    return assemble(merge_collected(all_gather_object(part, ctx)), model)


def evaluate_sharded(model: nn.Module, loader, device: str | torch.device = "cpu",
                     amp_dtype: torch.dtype | None = None, progress: bool = False,
                     ctx: DistContext | None = None) -> dict[str, float | None]:
    """:func:`medtl.engine.evaluate.evaluate` on the gathered predictions of :func:`predict_sharded`."""
    from medtl.engine.evaluate import metrics_from_predictions

    return metrics_from_predictions(predict_sharded(model, loader, device, amp_dtype, progress, ctx))


class LossStep(nn.Module):
    """The strategy's ``training_loss`` as a module's forward, so DDP sees (and synchronises) each step."""

    def __init__(self, strategy: nn.Module):
        super().__init__()
        self.strategy = strategy

    def forward(self, batch, target, progress):
        return self.strategy.training_loss(batch, target, progress)


def wrap_ddp(strategy: nn.Module, device: torch.device, find_unused_parameters: bool):
    """DDP over the strategy's trainable parameters (those with ``requires_grad`` now), or None when
    nothing trains. Buffers are not broadcast every step (see :func:`sync_buffers`)."""
    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in strategy.parameters()):
        return None
    import inspect

    # No buffer broadcast before every forward (newer PyTorch calls the switch forward_sync_buffers).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(
        LossStep(strategy), device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters, **no_sync,
    )


def convert_sync_batchnorm(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace batch-norm layers by ``SyncBatchNorm`` in place (sharing their parameters and buffers);
    returns what :func:`restore_batchnorm` needs to put the originals back."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                sync = nn.SyncBatchNorm.convert_sync_batchnorm(child)
                setattr(parent, name, sync)
                swaps.append((parent, name, child))
    return swaps


def restore_batchnorm(swaps: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, original in reversed(swaps):
        original.train(getattr(parent, name).training)
        setattr(parent, name, original)


__all__ = [
    "DistContext", "LossStep", "RankWorkerInit", "ShardedBatchSampler", "all_gather_object", "all_reduce_sum", "barrier",
    "broadcast_module_state", "broadcast_object", "comm_device", "convert_sync_batchnorm", "current",
    "default_backend", "evaluate_sharded", "global_batches", "init_distributed", "is_distributed_loader",
    "predict_sharded", "restore_batchnorm", "shard_loader", "sync_buffers", "torchrun_env", "wrap_ddp",
]
