"""The one trainer every strategy runs in: device, mixed precision, seeds, checkpoints, resume, logs.

It knows nothing method-specific: it builds the optimiser from ``strategy.param_groups()``, calls
``on_epoch_start`` and asks ``training_loss`` for each step (with a target batch for strategies whose
``needs_target`` is True, drawn from a second loader that restarts every epoch and cycles when shorter).

Run folder (``run_dir``; the names are :class:`medtl.engine.run_folder.RunFolder`'s)::

    config.json     training config, strategy name and hyper-parameters
    metrics.jsonl   one JSON object per finished epoch (train loss and parts, val metrics, lr, time)
    last.pt         full training state after the last finished epoch (weights_only-readable)
    best.pt         model (medtl checkpoint format) at the best monitored value

The loop (:meth:`Trainer.fit`) is small: each epoch trains (:meth:`Trainer._train_epoch`), validates
(:meth:`Trainer._epoch_record`), then calls the epoch-end handlers in order: :class:`BestCheckpoint`
(the monitored metric, ``best.pt``), :class:`MetricLogger` (history, ``metrics.jsonl``),
:class:`LastCheckpoint` (``last.pt``), :class:`EarlyStopping` (patience) and :class:`CallbackRunner`
(the user's callbacks; :class:`StopTraining` ends training).

Resume: ``fit`` on a run folder that holds ``last.pt`` continues after its epoch. Every epoch
re-seeds Python, NumPy, torch, the loaders' generators and (single-process loaders) the MONAI
random transforms from ``(seed, epoch)``, so an interrupted run resumed on CPU in deterministic mode
ends with exactly the weights of an uninterrupted one.

Distributed (docs/distributed.md): started by ``torchrun`` with more than one process, ``fit``
starts the process group (gloo on CPU, nccl on CUDA, one GPU per process), wraps the strategy's
trainable parameters in DDP (rebuilt when a schedule freezes or thaws parameters), splits every
global batch of a plain loader across the ranks (a loader with a ``DistributedSampler`` is used as
it is), gathers the training sums and the validation predictions so every rank logs and decides on
the same numbers, and lets only rank 0 write the run folder and show progress bars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.engine import distributed as D
from medtl.engine.evaluate import evaluate
from medtl.engine.inference import (
    autocast,
    channels_last_input,
    precision_dtype,
    to_channels_last,
    to_device,
    uses_channels_last,
)
from medtl.engine.run_folder import RunFolder
from medtl.errors import MedtlError
from medtl.models.checkpoint import model_config, model_state_dict, save_atomic, save_checkpoint
from medtl.models.formats import TRAIN_STATE_FORMAT
from medtl.models.weights import blocked
from medtl.plain import differing_keys, plain

log = logging.getLogger(__name__)


# Training options a resumed run may change: how long and where it trains, not what it learns.
RESUMABLE_OPTIONS = ("epochs", "patience", "progress", "device", "num_workers", "max_steps_per_epoch")


@dataclass
class TrainConfig:
    """Every training option, with its default (the one documented place)."""

    epochs: int = 10
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # engine.inference.precision_dtype: "auto" = bf16 on CUDA, fp32 on CPU; "off", "bf16", "fp16"
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms (warn where none exists), no cuDNN autotuning
    grad_clip: float | None = None  # max global gradient norm
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum, nesterov)
    momentum: float = 0.9
    scheduler: str = "cosine"  # "cosine" (per step, to 0) or "constant"
    warmup_steps: int = 0  # linear warm-up before the schedule
    monitor: str | None = None  # metric for best/early stopping; None: "val_loss" with validation, else "train_loss"
    mode: str = "auto"  # "min" / "max"; auto: min for loss/mae, max otherwise
    patience: int | None = None  # early stopping after this many epochs without improvement
    min_delta: float = 0.0
    restore_best: bool = True  # end with the best epoch's weights
    progress: bool = True  # tqdm bars
    max_steps_per_epoch: int | None = None
    distributed: str = "auto"  # "auto": DDP when torchrun started several processes; "off": ignore torchrun
    dist_backend: str = "auto"  # "auto": nccl on CUDA, gloo on CPU; or "gloo" / "nccl"
    find_unused_parameters: bool | None = None  # DDP option; None: True for strategies with needs_target
    sync_batchnorm: bool = False  # SyncBatchNorm while training distributed (CUDA only, as in PyTorch)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values or {}) - names)
        if unknown:
            raise MedtlError(f"unknown training option(s) {unknown}; known: {sorted(names)}", "train")
        return cls(**(values or {})).validated()

    def validated(self) -> "TrainConfig":
        def bad(key, why):
            raise MedtlError(f"{why}, got {getattr(self, key)!r}", f"train.{key}")

        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad("epochs", "epochs must be a positive integer")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            bad("amp", "amp must be 'auto', 'off', 'bf16' or 'fp16'")
        if self.optimizer not in ("adamw", "sgd"):
            bad("optimizer", "optimizer must be 'adamw' or 'sgd'")
        if self.scheduler not in ("cosine", "constant"):
            bad("scheduler", "scheduler must be 'cosine' or 'constant'")
        if self.mode not in ("auto", "min", "max"):
            bad("mode", "mode must be 'auto', 'min' or 'max'")
        if self.patience is not None and self.patience < 1:
            bad("patience", "patience must be >= 1 or None")
        if self.grad_clip is not None and self.grad_clip <= 0:
            bad("grad_clip", "grad_clip must be > 0 or None")
        if self.distributed not in ("auto", "off"):
            bad("distributed", "distributed must be 'auto' or 'off'")
        if self.dist_backend not in ("auto", "gloo", "nccl"):
            bad("dist_backend", "dist_backend must be 'auto', 'gloo' or 'nccl'")
        return self


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    monitor: str
    best_value: float | None
    best_epoch: int | None
    stopped_early: bool
    run_dir: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_metrics(self) -> dict[str, Any]:
        for rec in self.history:
            if rec["epoch"] == self.best_epoch:
                return rec
        return self.history[-1] if self.history else {}


class StopTraining(Exception):
    """Raise from a callback to end training cleanly after the current epoch (state is saved)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CUDA generators too


def resolve_device(device: str, local_rank: int | None = None, where: str = "train.device") -> torch.device:
    """``device`` as a torch device; with ``local_rank`` (a torchrun process), "auto" and "cuda" mean
    GPU ``local_rank`` (modulo the GPUs present). ``where`` names the setting in errors."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MedtlError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)", where) from None
    if dev.type not in ("cpu", "cuda"):
        raise MedtlError(f"device {device!r}: medtl runs on cpu or cuda (auto picks)", where)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedtlError(f"device {device!r}, but torch sees no CUDA GPU here (device auto uses one when there is "
                         "one)", where)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MedtlError(f"device {device!r}, but torch sees {torch.cuda.device_count()} GPU(s)", where)
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    return precision_dtype(amp, device)  # the one precision policy (engine.evaluate)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + epoch) % 2**31


def _rank_seed(seed: int, rank: int) -> int:
    return (seed + 7_919 * rank) % 2**31 if rank else seed


def _reseed_loader(loader, seed: int, epoch: int = 0, rank: int = 0) -> None:
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(seed)
        if hasattr(obj, "set_epoch"):  # DistributedSampler: its shuffle follows (seed, epoch)
            obj.set_epoch(epoch)
    if getattr(loader, "num_workers", 0) == 0 and getattr(loader, "dataset", None) is not None:
        # Single-process loading: MONAI's random transforms keep their own states; seed them per epoch
        # (and per rank: the ranks load different items and should not share augmentation draws).
        from monai.data.utils import set_rnd

        set_rnd(loader.dataset, _rank_seed(seed, rank))


class _RankRng:
    """Two streams of torch's (CPU) global generator: the data stream, the same on every rank, for the
    loaders (their samplers draw the epoch's order from it), and this rank's own stream for the rest."""

    def __init__(self, own_seed: int):
        self.data_state = torch.get_rng_state()
        torch.manual_seed(own_seed)
        self.own_state = None

    @contextlib.contextmanager
    def data(self):
        self.own_state = torch.get_rng_state()
        torch.set_rng_state(self.data_state)
        try:
            yield
        finally:
            self.data_state = torch.get_rng_state()
            torch.set_rng_state(self.own_state)


def _fetching(loader, rng: _RankRng | None):
    """Iterate ``loader``, drawing from the data stream of ``rng`` while fetching."""
    if rng is None:
        yield from loader
        return
    with rng.data():
        it = iter(loader)
    while True:
        with rng.data():
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


def _cycle(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise MedtlError("the target loader is empty", "target_loader")


_ABSENT = object()


def _at(record: dict, dotted: str, absent=None):
    """The value at a dotted key of ``differing_keys``; ``absent`` where ``record`` lacks it."""
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return absent
        record = record[part]
    return record


@dataclass
class TrainState:
    """What the epoch loop and its handlers share."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "epoch": None, "bad_epochs": 0})
    history: list[dict[str, Any]] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None  # the best epoch's weights, kept in memory without a run folder
    stopped_early: bool = False  # patience ran out
    stop: bool = False  # a callback raised StopTraining


# -- handlers: what happens when an epoch completes, in this order (MONAI's handler style) ----------
class BestCheckpoint:
    """Tracks the monitored metric; on improvement saves ``best.pt`` (or keeps the weights in memory)."""

    def __init__(self, monitor: str, mode: str, min_delta: float, keep_in_memory: bool):
        self.monitor, self.mode, self.min_delta, self.keep_in_memory = monitor, mode, min_delta, keep_in_memory

    def improved(self, value, best) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def epoch_completed(self, trainer: Trainer, state: TrainState, record: dict[str, Any]) -> None:
        if self.monitor not in record:
            raise MedtlError(f"monitored metric {self.monitor!r} is not logged; logged: {sorted(record)}",
                             "train.monitor")
        improved = self.improved(record[self.monitor], state.best["value"])
        if improved:
            state.best = {"value": record[self.monitor], "epoch": record["epoch"], "bad_epochs": 0}
            trainer._save_best(record["epoch"])
            if self.keep_in_memory:
                state.best_weights = {k: v.detach().clone() for k, v in trainer.strategy.state_dict().items()}
        else:
            state.best["bad_epochs"] = state.best.get("bad_epochs", 0) + 1
        record["best"] = improved


class MetricLogger:
    """The epoch's record into the history and (rank 0) ``metrics.jsonl``."""

    def epoch_completed(self, trainer: Trainer, state: TrainState, record: dict[str, Any]) -> None:
        state.history.append(record)
        if trainer.folder is not None and trainer.ctx.is_main:
            trainer.folder.append_log(record)


class LastCheckpoint:
    """The full training state into ``last.pt`` (rank 0), for resume; then the epoch's best.pt, written pending
    by :class:`BestCheckpoint`, becomes ``best.pt``: the two change together as far as a resume can tell."""

    def epoch_completed(self, trainer: Trainer, state: TrainState, record: dict[str, Any]) -> None:
        if trainer.folder is not None and trainer.ctx.is_main:
            trainer._save_state(trainer.folder.last, state)
            trainer.folder.settle_best(state.best.get("epoch"))


class EarlyStopping:
    """Stops after ``patience`` epochs without improvement of the monitored metric."""

    def __init__(self, patience: int | None):
        self.patience = patience

    def epoch_completed(self, trainer: Trainer, state: TrainState, record: dict[str, Any]) -> None:
        state.stopped_early = self.patience is not None and state.best["bad_epochs"] >= self.patience


class CallbackRunner:
    """The user's ``callbacks(record)``; one raising :class:`StopTraining` ends training (on every rank)."""

    def __init__(self, callbacks: Iterable[Callable[[dict[str, Any]], None]]):
        self.callbacks = list(callbacks)

    def epoch_completed(self, trainer: Trainer, state: TrainState, record: dict[str, Any]) -> None:
        stop = False
        try:
            for cb in self.callbacks:
                cb(record)
        except StopTraining:
            stop = True
        if trainer.ctx.enabled:  # a callback that stops on one rank stops them all
            stop = D.all_reduce_sum([float(stop)], trainer.ctx)[0] > 0
        state.stop = stop


@dataclass
class _Loaders:
    train: Any  # the loaders as given (reseeded every epoch)
    val: Any
    target: Any
    train_iter: Any  # this rank's part of each global batch
    target_iter: Any
    steps: int  # per epoch
    total_steps: int


class Trainer:
    """Runs a strategy over loaders; see the module docstring for the run folder and resume.

    :meth:`fit` is a small epoch loop: :meth:`_train_epoch` (the steps), :meth:`_epoch_record`
    (validation and the logged numbers), then the handlers (:meth:`handlers`) at the end of each epoch.
    """

    def __init__(
        self,
        strategy: nn.Module,
        config: TrainConfig | dict[str, Any] | None = None,
        run_dir: str | Path | None = None,
        callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
        checkpoint_meta: dict[str, Any] | None = None,
        epoch_metrics: Iterable[Callable[[nn.Module], dict[str, Any]]] = (),
    ):
        self.strategy = strategy
        # extra per-epoch measurements (e.g. label-free selector scores), logged before the monitored
        # metric is read, so one of them can choose the best checkpoint
        self.epoch_metrics = list(epoch_metrics)
        self.config = config.validated() if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.folder = RunFolder(self.run_dir) if self.run_dir is not None else None
        self.callbacks = list(callbacks)
        env = D.torchrun_env() if self.config.distributed == "auto" else None
        self.env = env if env is not None and env.world_size > 1 else None  # None: one process
        self.device = resolve_device(self.config.device, self.env.local_rank if self.env else None)
        self.ctx = D.DistContext()  # the process group in use, set by fit
        self.amp_dtype = amp_dtype(self.config.amp, self.device)
        # stored in best.pt (label names, image size, ...), with the precision the model was evaluated in
        self.checkpoint_meta = {"precision": self.config.amp, **(checkpoint_meta or {})}
        self._ddp, self._ddp_key = None, None

    # -- pieces ------------------------------------------------------------------------------------
    def _groups(self) -> list[dict[str, Any]]:
        groups = self.strategy.param_groups()
        if not groups or not any(len(list(g["params"])) for g in groups):
            raise MedtlError(f"strategy {getattr(self.strategy, 'name', '?')!r} has no parameters to train", "strategy")
        return groups

    def _optimizer(self, groups) -> torch.optim.Optimizer:
        groups = [{**g, "params": list(g["params"])} for g in groups]
        if self.config.optimizer == "sgd":
            m = self.config.momentum
            return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=m, nesterov=m > 0)
        # a group without weight_decay gets none, under either optimiser (not AdamW's own default of 0.01)
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=0.0)

    def _lr_factor(self, step: int, total: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    def _monitor(self, has_val: bool) -> tuple[str, str]:
        name = self.config.monitor or ("val_loss" if has_val else "train_loss")
        mode = self.config.mode
        if mode == "auto":
            mode = "min" if name.endswith(("loss", "mae")) else "max"
        return name, mode

    def handlers(self, monitor: str, mode: str) -> list:
        """What runs when an epoch completes, in order: each has ``epoch_completed(trainer, state, record)``."""
        cfg = self.config
        return [BestCheckpoint(monitor, mode, cfg.min_delta, keep_in_memory=cfg.restore_best and self.folder is None),
                MetricLogger(), LastCheckpoint(), EarlyStopping(cfg.patience), CallbackRunner(self.callbacks)]

    # -- run folder --------------------------------------------------------------------------------
    def _save_state(self, path: Path, state: TrainState) -> None:
        saved = {
            "format": TRAIN_STATE_FORMAT,
            "epoch": state.epoch,  # epochs finished
            "global_step": state.step,
            "model": {k: v.detach().cpu() for k, v in self.strategy.state_dict().items()},
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "best": plain(state.best),
            "strategy": getattr(self.strategy, "name", None),
        }
        save_atomic(saved, path)  # a crash or a full disk mid-save leaves the previous state intact

    def _read_state(self, path: Path) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise MedtlError(f"refused to resume from a training state that holds pickled Python objects (possibly "
                             f"code), not plain tensors ({blocked(err)}); nothing in it was run", path) from None
        except Exception as err:
            raise MedtlError(f"cannot read the training state to resume from: {str(err)[:200]}", path) from None
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise MedtlError("not a medtl training state", path)
        name = getattr(self.strategy, "name", None)
        if state.get("strategy") != name:
            raise MedtlError(f"the run was trained with strategy {state.get('strategy')!r}, not {name!r}", path)
        self._require_same_settings()
        return state

    def _settings(self) -> dict[str, Any]:
        """What trains the run, as ``config.json`` records it."""
        return {
            "train": dataclasses.asdict(self.config),
            "strategy": getattr(self.strategy, "name", None),
            "hparams": getattr(self.strategy, "hparams", None),
            "model": model_config(self.strategy),
            "distributed": {"world_size": self.ctx.world_size, "backend": self.ctx.backend},
        }

    def _require_same_settings(self) -> None:
        """Resuming continues the saved weights: refuse when the hyper-parameters, model or training options
        (other than RESUMABLE_OPTIONS) changed, instead of going on with the old ones under a record of the new."""
        import json

        if not self.folder.config.exists():
            return
        try:
            old = json.loads(self.folder.config.read_text())
        except (OSError, ValueError) as err:  # a resume unchecked could go on with other settings, unsaid
            raise MedtlError(f"cannot read this run's settings to check a resume ({err}): start over here "
                             "(--no-resume, resume=False), or delete the file to resume unchecked",
                             self.folder.config) from None
        new = plain(self._settings())  # as config.json records it (NaN and infinity as None)
        defaults = plain(dataclasses.asdict(TrainConfig()))

        def changed(key: str) -> bool:
            option = key.split(".")[1] if key.startswith("train.") else None
            if option in RESUMABLE_OPTIONS:
                return False
            if _at(old, key, _ABSENT) is _ABSENT:  # a setting this run's older medtl did not record: only off its default
                return option is not None and _at(new, key) != defaults.get(option)
            return True

        sections = ("train", "strategy", "hparams", "model")
        differ = [k for k in differing_keys({s: old.get(s) for s in sections}, {s: new.get(s) for s in sections})
                  if changed(k)]
        if differ:
            shown = "; ".join(f"{k}: {_at(old, k)!r} -> {_at(new, k)!r}" for k in differ[:5])
            raise MedtlError(f"this folder holds a run trained with other settings ({shown}); to go on with them, "
                             "give the same settings; else use another folder (run_dir, --out) or start over "
                             "(resume=False, --no-resume)", self.folder.path)
        before = (old.get("distributed") or {}).get("world_size")
        if before is not None and before != self.ctx.world_size:  # allowed, but what it learns depends on it
            log.warning("resuming %s with %d process(es), where its earlier epochs ran with %d: batch norm's "
                        "statistics, the per-rank augmentation and the steps per epoch may differ from here on",
                        self.folder.path, self.ctx.world_size, before)

    def _apply_state(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.strategy.load_state_dict(state["model"])
        except RuntimeError as err:
            raise MedtlError(f"the saved weights do not fit this model: {str(err)[:300]}", path) from None

    def _write_config(self) -> None:
        self.folder.write_config(self._settings())

    def _save_best(self, epoch: int) -> None:
        if self.ctx.is_main and self.folder is not None and hasattr(self.strategy, "encoder") and hasattr(self.strategy, "head"):
            save_checkpoint(self.folder.best_pending(epoch), self.strategy, **self.checkpoint_meta)

    def _resume_state(self, resume: bool) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Rank 0 reads ``last.pt`` and the log and shares them (the other ranks need no shared disk)."""
        state, history, error = None, [], None
        if self.ctx.is_main:
            try:
                self.folder.create()
                if resume and self.folder.last.exists():
                    state = self._read_state(self.folder.last)
                    # a best.pt written after last.pt's epoch (killed in between) is not the recorded best
                    self.folder.settle_best((state.get("best") or {}).get("epoch"))
                    self.folder.truncate_log(int(state["epoch"]))
                    history = self.folder.read_log()
                else:
                    self.folder.clear_log()  # a fresh run: no stale lines
                    self.folder.settle_best(None)
            except MedtlError as err:
                error = (err.reason, err.where)
        if self.ctx.enabled:
            state, history, error = D.broadcast_object((state, history, error), 0, self.ctx)
        if error is not None:
            raise MedtlError(*error)
        return state, history

    def _start(self, resume: bool) -> TrainState:
        """A fresh training state, or the one in ``last.pt`` when resuming; writes ``config.json``."""
        optimizer = self._optimizer(self._groups())
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and self.device.type == "cuda" else None
        state = TrainState(optimizer, scaler)
        if self.folder is not None:
            saved, state.history = self._resume_state(resume)
            if saved is not None:
                self._apply_state(saved, self.folder.last)
                optimizer.load_state_dict(saved["optimizer"])
                if scaler is not None and saved.get("scaler"):
                    scaler.load_state_dict(saved["scaler"])
                state.epoch, state.step, state.best = int(saved["epoch"]), int(saved["global_step"]), dict(saved["best"])
                log.info("resuming %s after epoch %d", self.run_dir, state.epoch)
            if self.ctx.is_main:
                self._write_config()
        state.stopped_early = state.best.get("bad_epochs", 0) >= (self.config.patience or math.inf)
        return state

    def _restore_best(self, best_weights) -> None:
        if best_weights is not None:
            self.strategy.load_state_dict(best_weights)
            return
        path = self.folder.best if self.folder is not None else None
        if path is None or not path.exists():
            return
        from medtl.models.checkpoint import read_checkpoint
        from medtl.models.weights import check_and_load

        sd = read_checkpoint(path)["state_dict"]
        target = {k: v for k, v in sd.items()}
        holder = nn.Module()  # load encoder/head only; the strategy's extra state (L2-SP reference) stays
        holder.encoder, holder.head = self.strategy.encoder, self.strategy.head
        check_and_load(holder, target, where=str(path))

    # -- distributed pieces ------------------------------------------------------------------------
    def _start_distributed(self) -> D.DistContext:
        if self.env is None:
            return D.DistContext()
        backend = None if self.config.dist_backend == "auto" else self.config.dist_backend
        ctx = D.init_distributed(self.device, backend)
        if ctx.world_size != self.env.world_size:
            raise MedtlError(f"the process group has {ctx.world_size} processes, torchrun started "
                             f"{self.env.world_size}", "environment")
        return ctx

    def _find_unused(self) -> bool:
        if self.config.find_unused_parameters is not None:
            return bool(self.config.find_unused_parameters)
        return bool(getattr(self.strategy, "ddp_find_unused_parameters", getattr(self.strategy, "needs_target", False)))

    def _plan(self, train_loader, val_loader, target_loader) -> _Loaders:
        """Each rank's part of every global batch (a DistributedSampler loader is already per rank)."""
        ctx, cfg = self.ctx, self.config
        train_iter = D.shard_loader(train_loader, ctx)
        target_iter = D.shard_loader(target_loader, ctx) if target_loader is not None else None
        steps = len(train_iter)
        if ctx.enabled:
            lengths = D.all_gather_object(steps, ctx)
            if len(set(lengths)) != 1:
                raise MedtlError(f"the ranks' training loaders differ in length ({lengths}): every process must "
                                 "take the same number of steps", "train_loader")
        if steps == 0:
            raise MedtlError("the training loader is empty", "train_loader")
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        return _Loaders(train_loader, val_loader, target_loader, train_iter, target_iter, steps, cfg.epochs * steps)

    @contextlib.contextmanager
    def _deterministic(self):
        prev_det, prev_bench = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
        if self.config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.backends.cudnn.benchmark = prev_bench

    @contextlib.contextmanager
    def _sync_batchnorm(self):
        """SyncBatchNorm while training distributed (if asked); the plain layers and no DDP wrapper afterwards."""
        swaps: list = []
        if self.ctx.enabled and self.config.sync_batchnorm:
            if self.device.type != "cuda":
                raise MedtlError("sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on CPU "
                                 "keep the norm statistics fixed (freeze_norm) or accept per-rank statistics",
                                 "train.sync_batchnorm")
            swaps = D.convert_sync_batchnorm(self.strategy)
        try:
            yield
        finally:
            self._ddp, self._ddp_key = None, None
            if swaps:
                D.restore_batchnorm(swaps)

    def _wrap_ddp(self) -> None:
        # DDP synchronises the parameters that train when it is built: rebuild it when a schedule
        # (gradual unfreezing, LP-FT) changes them.
        key = tuple(id(p) for p in self.strategy.parameters() if p.requires_grad)
        if key != self._ddp_key:
            self._ddp = None
            self._ddp = D.wrap_ddp(self.strategy, self.device, self._find_unused())
            self._ddp_key = key

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, train_loader, val_loader=None, target_loader=None, resume: bool = True) -> TrainResult:
        strategy = self.strategy
        if getattr(strategy, "needs_target", False) and target_loader is None:
            raise MedtlError(f"strategy {strategy.name!r} adapts to a target domain: give a target_loader", "target_loader")
        if target_loader is None:  # the model predicts what it trained on: best.pt records how to read it
            known = getattr(getattr(train_loader, "dataset", None), "deployment", None) or {}
            self.checkpoint_meta = {**known, **self.checkpoint_meta}
        ctx = self.ctx = self._start_distributed()
        loaders = self._plan(train_loader, val_loader, target_loader)
        monitor, mode = self._monitor(val_loader is not None)
        with self._deterministic():
            strategy.to(self.device)
            if uses_channels_last(self.amp_dtype):  # the layout the precision policy's kernels want
                to_channels_last(strategy)
            with self._sync_batchnorm():
                state = self._start(resume)
                self._run_epochs(state, loaders, self.handlers(monitor, mode), monitor)
                self._finish(state)
        return TrainResult(state.history, monitor, state.best["value"], state.best["epoch"], state.stopped_early,
                           self.run_dir, extra={"world_size": ctx.world_size, "rank": ctx.rank})

    def _run_epochs(self, state: TrainState, loaders: _Loaders, handlers: list, monitor: str) -> None:
        for epoch in range(state.epoch, self.config.epochs):
            if state.stopped_early:
                break
            t0 = time.time()
            sums, seen = self._train_epoch(epoch, state, loaders)
            state.epoch = epoch + 1
            record = self._epoch_record(epoch, sums, seen, loaders.val, state.optimizer, t0)
            for handler in handlers:
                handler.epoch_completed(self, state, record)
            if state.stop:
                break
            if state.stopped_early:
                log.info("early stopping after epoch %d (%s did not improve for %d epochs)", epoch + 1, monitor,
                         self.config.patience)

    def _finish(self, state: TrainState) -> None:
        """The best epoch's weights back (if asked), on every rank; rank 0's files complete on return."""
        ctx = self.ctx
        self._ddp = None
        if self.config.restore_best and state.best["epoch"] is not None:
            if state.best_weights is not None or ctx.is_main:
                self._restore_best(state.best_weights)
            if ctx.enabled and state.best_weights is None:
                D.broadcast_module_state(self.strategy, 0, ctx)  # rank 0 read best.pt
        D.barrier(ctx)

    def _train_epoch(self, epoch: int, state: TrainState, loaders: _Loaders) -> tuple[dict[str, float], int]:
        """One epoch of steps; returns the loss sums (all ranks) and the number of items they cover."""
        from medtl.progress import bar as progress_bar

        cfg, strategy, ctx = self.config, self.strategy, self.ctx
        seed = _epoch_seed(cfg.seed, epoch)
        seed_everything(seed)  # the same on every rank: the ranks' samplers agree on the global batches
        _reseed_loader(loaders.train, seed, epoch, ctx.rank)
        if loaders.target is not None:
            _reseed_loader(loaders.target, seed + 1, epoch, ctx.rank)
        strategy.on_epoch_start(epoch, cfg.epochs)
        groups = self._groups()
        if len(groups) != len(state.optimizer.param_groups):
            raise MedtlError("param_groups() changed its number of groups between epochs", "strategy")
        base = [(float(g["lr"]), g.get("weight_decay")) for g in groups]
        strategy.train()
        if ctx.enabled:
            self._wrap_ddp()

        sums: dict[str, float] = {}
        seen: dict[str, int] = {}  # items behind each sum: a part logged on some steps only is averaged over those
        targets = _cycle(loaders.target_iter) if getattr(strategy, "needs_target", False) else None
        # Distributed: the loaders draw from a random stream that is the same on every rank (so the
        # ranks agree on the global batches); the steps (dropout, ...) from a per-rank one.
        rng = _RankRng(_rank_seed(seed, ctx.rank) + 1) if ctx.enabled else None
        bar = progress_bar(total=loaders.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                           enabled=cfg.progress and ctx.is_main)
        for i, batch in enumerate(_fetching(loaders.train_iter, rng)):
            if i >= loaders.steps:
                break
            factor = self._lr_factor(state.step, loaders.total_steps)
            for g, (lr, wd) in zip(state.optimizer.param_groups, base):
                g["lr"] = lr * factor
                if wd is not None:
                    g["weight_decay"] = wd
            batch = self._place(batch)
            if targets is not None:
                with rng.data() if rng is not None else contextlib.nullcontext():
                    target = next(targets)
                target = self._place(target)
            else:
                target = None
            n, raw_loss, parts = self._step(state, batch, target, state.step / loaders.total_steps, epoch, i)
            for k, v in {**parts, "loss": raw_loss}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
                seen[k] = seen.get(k, 0) + n
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / seen['loss']:.4f}")
        bar.close()
        if ctx.enabled:
            sums, seen = self._gather_sums(sums, seen)
            D.sync_buffers(strategy, ctx)  # equal running statistics before validation and saving
        return sums, seen

    def _place(self, batch: dict) -> dict:
        """A batch on the device, its images in the memory layout of the precision policy."""
        batch = to_device(batch, self.device)
        if uses_channels_last(self.amp_dtype) and isinstance(batch.get("image"), torch.Tensor):
            batch["image"] = channels_last_input(batch["image"])
        return batch

    def _step(self, state: TrainState, batch, target, progress: float, epoch: int, i: int):
        """One optimiser step (AMP, DDP, gradient clipping); returns the batch size, its loss and the loss parts."""
        cfg, ctx, optimizer, scaler = self.config, self.ctx, state.optimizer, state.scaler
        optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            if self._ddp is not None:
                try:
                    loss, parts = self._ddp(batch, target, progress)
                except RuntimeError as err:
                    raise self._ddp_error(err) from err
            else:
                loss, parts = self.strategy.training_loss(batch, target, progress)
        n = int(batch["image"].shape[0])
        finite = bool(torch.isfinite(loss.detach()))
        raw_loss = float(loss.detach())
        if ctx.enabled:
            n_global, bad = D.all_reduce_sum([n, 0.0 if finite else 1.0], ctx)
            if bad:
                raise MedtlError(f"loss is not finite on {int(bad)} of {ctx.world_size} processes at "
                                 f"epoch {epoch + 1}, step {i + 1}: lower the learning rate or check the "
                                 "inputs", "training")
            # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
            # global batch makes that the gradient of the global batch's mean loss.
            loss = loss * (ctx.world_size * n / n_global)
        elif not finite:
            raise MedtlError(f"loss is {raw_loss} at epoch {epoch + 1}, step {i + 1}: lower the "
                             "learning rate or check the inputs", "training")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return n, raw_loss, parts

    def _epoch_record(self, epoch: int, sums: dict[str, float], seen: dict[str, int], val_loader, optimizer,
                      t0: float) -> dict[str, Any]:
        """The epoch's log line: mean training losses (each over the steps that computed it, e.g. a target loss
        only on steps with labelled target rows), validation metrics, extra measurements, lr, time."""
        record: dict[str, Any] = {"epoch": epoch}
        record.update({f"train_{k}": v / max(seen.get(k, 0), 1) for k, v in sums.items()})
        if val_loader is not None:
            if self.ctx.enabled:  # each rank predicts a part; metrics on the gathered predictions
                show = self.config.progress and self.ctx.is_main
                val = D.evaluate_sharded(self.strategy, val_loader, self.device, self.amp_dtype, show, self.ctx)
            else:
                val = evaluate(self.strategy, val_loader, self.device, self.amp_dtype, self.config.progress)
            record.update({f"val_{k}": v for k, v in val.items()})
        for measure in self.epoch_metrics:
            record.update(measure(self.strategy))
        record["lr"] = [g["lr"] for g in optimizer.param_groups]
        record["seconds"] = round(time.time() - t0, 3)
        return record

    @staticmethod
    def _ddp_error(err: RuntimeError) -> Exception:
        if "find_unused_parameters" in str(err):
            return MedtlError("some trainable parameters took no part in a step's loss, which DDP refuses by default: "
                              "set find_unused_parameters=True in the training options", "train.find_unused_parameters")
        return err

    def _gather_sums(self, sums: dict[str, float], seen: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
        """The epoch's loss sums and item counts over all ranks (keys may differ: a part logged only on some)."""
        total: dict[str, float] = {}
        n: dict[str, int] = {}
        for part_sums, part_seen in D.all_gather_object((sums, seen), self.ctx):
            for k, v in part_sums.items():
                total[k] = total.get(k, 0.0) + v
                n[k] = n.get(k, 0) + part_seen[k]
        return total, n


def fit(strategy: nn.Module, train_loader, val_loader=None, *, target_loader=None, run_dir: str | Path | None = None,
        callbacks: Iterable[Callable[[dict[str, Any]], None]] = (), resume: bool = True,
        checkpoint_meta: dict[str, Any] | None = None, epoch_metrics=(), **config) -> TrainResult:
    """Train ``strategy``: ``fit(strategy, train, val, run_dir="runs/x", epochs=5, patience=2)``."""
    trainer = Trainer(strategy, TrainConfig.from_dict(config), run_dir, callbacks, checkpoint_meta, epoch_metrics)
    return trainer.fit(train_loader, val_loader, target_loader, resume=resume)


__all__ = ["BestCheckpoint", "CallbackRunner", "EarlyStopping", "LastCheckpoint", "MetricLogger", "StopTraining",
           "TrainConfig", "TrainResult", "TrainState", "Trainer", "amp_dtype", "fit", "model_state_dict",
           "resolve_device", "seed_everything"]
