"""MONAI datasets over a manifest, with the deterministic part of each preset cached.

``build_dataset`` returns a dataset of dictionaries::

    {"image": float32 tensor (1, H, W) or (1, X, Y, Z), plain (no MONAI metadata), "label": long (-1 for ``unlabelled`` rows
     when the label set has real classes; float for regression),
     "case_id": manifest path, "patient_id": str, "domain": str, "near_copy_group": str ("" for none)}

Bad items: with ``on_error="raise"`` (default) the first bad file stops with its ``MedtlError``.
With ``on_error="skip"`` every bad file is logged, written to ``<run_dir>/skipped.csv`` (path and
reason) and left out; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset, PersistentDataset
from monai.transforms import Compose, Transform
from torch.utils.data import Dataset as TorchDataset

from medtl.data.manifest import NEAR_COPY_GROUP, REQUIRED_COLUMNS, Manifest
from medtl.data.transforms import CHAIN_VERSION, METADATA_LOCK, Preset, SplitChain, preset, untracked_meta
from medtl.errors import MedtlError
from medtl.paths import resolve_inside
from medtl.plain import plain
from medtl.runtime import torchrun_rank

log = logging.getLogger(__name__)
ERROR_KEY = "medtl_error"
UNLABELLED = "unlabelled"


class Guarded(Transform):
    """Runs the deterministic transforms; a bad item becomes ``{..., ERROR_KEY: reason}``.

    The transforms are called directly rather than through ``Compose`` so that MONAI does not wrap
    our error in a RuntimeError or log the item's contents (which may hold patient identifiers).
    """

    def __init__(self, transforms: list):
        self.transforms = transforms
        # Cached as a plain tensor: nothing after the deterministic part reads the metadata, and the
        # random part and collation run faster without it (see ``untracked_meta``).
        self.chain = SplitChain(transforms)

    def __call__(self, item: dict) -> dict:
        try:
            return self.chain(item)
        except MedtlError as err:
            return {**item, ERROR_KEY: err.reason}
        except Exception as err:  # a transform failed on a file that opened: still this file's fault
            return {**item, ERROR_KEY: f"{type(err).__name__}: {err}"}


class ManifestDataset(TorchDataset):
    """Cached deterministic items (a MONAI dataset) followed by the random part, per access.

    Items that failed to load raise their ``MedtlError`` on access; ``indices`` leaves out the ones
    a skip-mode build already listed.
    """

    def __init__(self, base, transform: Compose | None, indices: list[int] | None = None,
                 deployment: dict | None = None):
        self.base = base
        self.transform = transform  # named `transform` so MONAI's worker seeding finds the random part
        self.indices = list(range(len(base))) if indices is None else indices
        # what a checkpoint of a model trained on these items needs for medtl predict: the class names (or the
        # regression target's name) and the preprocessing; the trainer stores it in best.pt
        self.deployment = dict(deployment or {})

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        steps = len(self.transform.transforms) if self.transform is not None else 0
        return f"ManifestDataset({len(self)} items, {type(self.base).__name__}, {steps} random transform(s))"

    def __getitem__(self, i: int) -> dict:
        item = self.base[self.indices[i]]
        if ERROR_KEY in item:  # named by its full path: a wrong data root shows in it
            raise MedtlError(item[ERROR_KEY], item["image"] if isinstance(item.get("image"), str) else item["case_id"])
        if self.transform is None:
            return item
        with untracked_meta():
            return self.transform(item)


def manifest_items(manifest: Manifest, data_root: str | Path, label_column: str = "label",
                   task: str = "classification") -> list[dict]:
    if label_column != "label" and len(manifest) and label_column not in manifest.extra_columns:
        columns = list(REQUIRED_COLUMNS) + manifest.extra_columns
        raise MedtlError(f"the manifest has no column {label_column!r}; its columns are {columns}",
                         manifest.source or "label_column")
    items = []
    for row in manifest:
        where = row.where(manifest.source or "manifest")
        path = resolve_inside(data_root, row.path, where)
        raw = row.label if label_column == "label" else row.extras.get(label_column, "")
        if task == "regression":
            try:
                label = torch.tensor(float(raw), dtype=torch.float32)
            except ValueError:
                raise MedtlError(f"{label_column} {raw!r} is not a number", where) from None
        elif raw == UNLABELLED and UNLABELLED not in manifest.label_names:
            label = torch.tensor(-1, dtype=torch.long)  # unlabelled target rows: -1, as DA losses expect
        else:
            if raw not in manifest.label_names:
                raise MedtlError(f"label {raw!r} is not in the label set {manifest.label_names}", where)
            label = torch.tensor(manifest.label_names.index(raw), dtype=torch.long)
        items.append({"image": str(path), "label": label, "case_id": row.path,
                      "patient_id": row.patient_id, "domain": row.domain,
                      NEAR_COPY_GROUP: row.extras.get(NEAR_COPY_GROUP, "")})
    return items


def _reporting_rank() -> bool:
    """Under torchrun every rank builds the same dataset: only rank 0 shows its bar and lists skipped items."""
    return not torchrun_rank()


def _show_progress(progress: bool | None, n_items: int) -> bool:
    if not _reporting_rank():
        return False
    return progress if progress is not None else n_items > 50 and sys.stderr.isatty()


def build_dataset(
    manifest: Manifest,
    data_root: str | Path,
    preset_name: str | None = None,
    train: bool = False,
    *,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    on_error: str = "raise",
    run_dir: str | Path | None = None,
    label_column: str = "label",
    task: str = "classification",
    num_workers: int = 0,
    progress: bool | None = None,
    **preset_options,
):
    """A dataset over ``manifest`` (paths under ``data_root``) with the modality's preset chain.

    ``cache``: ``"memory"`` (filled by :func:`fill_cache`), ``"disk"`` (PersistentDataset in ``cache_dir``)
    or ``"none"``. ``num_workers``: processes that fill the memory cache (0: :func:`cache_workers`). ``preset_name`` defaults to the manifest's single modality. ``progress``: a loading bar while
    the memory cache fills; by default only for more than 50 items on a terminal (a log file gets no bar lines).
    """
    if not isinstance(manifest, Manifest):  # a DataFrame or a path would fail deep inside with another error
        raise MedtlError(f"build_dataset needs a Manifest (medtl.data.Manifest.load(path)), got "
                         f"{type(manifest).__name__}", "manifest")
    if on_error not in ("raise", "skip"):
        raise MedtlError(f"on_error must be 'raise' or 'skip', got {on_error!r}", "on_error")
    if cache not in ("memory", "disk", "none"):
        raise MedtlError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}", "cache")
    name = preset_name or manifest.modality
    det, rand = preset(name, train, **preset_options)
    deployment = {"intensity": {"preset": name, **Preset(name).resolved(preset_options)},
                  **({"task_name": label_column} if task == "regression"
                     else {"label_names": [n for n in manifest.label_names if n != UNLABELLED]})}
    guarded = Guarded(det)
    items = manifest_items(manifest, data_root, label_column, task)
    random_part = Compose(rand) if rand else None
    if cache == "memory":
        base = cached = fill_cache(items, guarded, num_workers, _show_progress(progress, len(items)))
    elif cache == "disk":
        folder = cache_dir if cache_dir is not None else Path(run_dir) / "cache" if run_dir is not None else None
        if folder is None:
            raise MedtlError("cache='disk' needs cache_dir (or run_dir, whose cache/ it then uses)", "cache_dir")
        # MONAI keys each entry by its item only: one subfolder per chain, so other options never read stale images
        base = PersistentDataset(items, guarded, cache_dir=str(Path(folder) / chain_key(name, preset_options)))
        cached = [base[i] for i in range(len(items))]  # computes (or reads) each entry once, now
    else:
        base = Dataset(items, guarded)
        cached = [guarded(item) for item in items] if on_error == "skip" else None
    if cached is None:  # uncached, raise mode: each bad file raises when it is read
        return ManifestDataset(base, random_part, deployment=deployment)
    bad = [(items[i]["case_id"], c[ERROR_KEY]) for i, c in enumerate(cached) if ERROR_KEY in c]
    if bad and on_error == "raise":
        first = next(i for i, c in enumerate(cached) if ERROR_KEY in c)
        raise MedtlError(bad[0][1], items[first]["image"])  # the full path: a wrong data root shows in it
    if bad:
        _record_skipped(bad, run_dir)
    good = [i for i, c in enumerate(cached) if ERROR_KEY not in c]
    return ManifestDataset(base, random_part, good, deployment)


def chain_key(preset_name: str, options: dict) -> str:
    """A short name for a preset chain with these options (every option resolved: defaults given or not agree)
    at this :data:`~medtl.data.transforms.CHAIN_VERSION`."""
    import hashlib
    import json

    resolved = {**Preset(preset_name).resolved(options), "chain_version": CHAIN_VERSION}
    return f"{preset_name}-" + hashlib.sha256(json.dumps(plain(resolved), sort_keys=True).encode()).hexdigest()[:12]


_FILL: tuple | None = None  # (items, chain) of the running fill_cache, inherited by its forked workers
_FILL_LOCK = threading.Lock()  # one fill at a time per process: _FILL is a module global
MIN_ITEMS_PER_WORKER = 32  # below this a worker process costs more than it saves


def _fill_one(i: int) -> dict:
    items, chain = _FILL
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in chain(items[i]).items()}


def cache_workers(requested: int = 0) -> int:
    """Processes for :func:`fill_cache`: ``requested``, else ``MEDTL_CACHE_WORKERS``, else this process's
    share of the usable CPUs (under torchrun, the CPUs divided among the ranks of this machine)."""
    from medtl.runtime import usable_cpus

    if requested:
        return requested
    if os.environ.get("MEDTL_CACHE_WORKERS", "").isdigit():
        return max(1, int(os.environ["MEDTL_CACHE_WORKERS"]))
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, usable_cpus() // (int(ranks) if ranks.isdigit() and int(ranks) > 0 else 1))


def fill_cache(items: list[dict], chain, workers: int = 0, progress: bool = False) -> list[dict]:
    """``[chain(item) for item in items]``, computed by forked worker processes (:func:`cache_workers`).

    Processes, not threads: the chain holds MONAI's process-wide metadata switch (``SplitChain``), so
    threads would run it one item at a time. Workers inherit the items and the chain when forked and
    send back numpy arrays (tensors would travel as shared-memory handles, one open file each): the
    chain's values must be tensors, arrays or plain objects at the top level, and the chain must run on
    the CPU (a forked child cannot use CUDA; the presets never do). Results come back in order, with one
    torch thread per worker. It runs in this process on one CPU, for fewer than 64 items, off Linux
    (fork is unsafe on macOS) and inside a daemonic process (which may not have children).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _FILL
    workers = min(cache_workers(workers), len(items) // MIN_ITEMS_PER_WORKER)
    if workers < 2 or not sys.platform.startswith("linux") or mp.current_process().daemon:
        return _collected((chain(item) for item in items), len(items), progress)
    # The workers fork while this thread holds the metadata lock, so no other thread is inside a chain
    # (a child would inherit the lock taken and wait for it forever); the bar starts after the forks.
    with _FILL_LOCK, METADATA_LOCK:
        _FILL = (items, chain)
        try:
            with ProcessPoolExecutor(workers, mp.get_context("fork"), initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
                results = pool.map(_fill_one, range(len(items)), chunksize=8)  # forks the workers now
                return _collected(({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in r.items()}
                                   for r in results), len(items), progress)
        except BrokenProcessPool:
            raise MedtlError("a worker process filling the cache died (out of memory?); MEDTL_CACHE_WORKERS=1 "
                             "caches in this process", "cache") from None
        finally:
            _FILL = None


def _collected(results, total: int, progress: bool) -> list[dict]:
    """The cached items, in order, with a loading bar (started only now: after the workers forked)."""
    from medtl.progress import bar

    out = []
    with bar(total=total, desc="caching", enabled=progress, leave=False) as show:
        for result in results:
            out.append(result)
            show.update(1)
    return out


def make_loader(dataset, batch_size: int, train: bool, seed: int, *, num_workers: int = 0, world_size: int = 1,
                pin_memory: bool | None = None, weights=None):
    """The one loader recipe: shuffled in training, its own seeded generator (MONAI's DataLoader would
    otherwise draw from, and rewind, torch's global one), pinned memory when CUDA is there. ``weights``
    (training only): each item's draw weight; an epoch is then ``len(dataset)`` draws with replacement.

    Drop-last rule: only in training, and only when the last batch would leave some rank (of
    ``world_size`` processes sharing the global batch) a single sample, which breaks batch norm on
    1x1 feature maps. Otherwise every sample is seen; evaluation never drops.
    """
    from monai.data import DataLoader

    last = len(dataset) % batch_size
    drop_last = train and len(dataset) > batch_size and 0 < last < 2 * world_size
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if weights is not None:
        if not train or len(weights) != len(dataset):
            raise ValueError("weights are for a training loader, one per item")
        # the sampler draws from the loader's generator, which the trainer re-seeds every epoch
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(dataset), replacement=True, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      drop_last=drop_last, num_workers=num_workers, generator=generator,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)


def _record_skipped(bad: list[tuple[str, str]], run_dir: str | Path | None) -> None:
    if not _reporting_rank():
        return
    for case_id, reason in bad:
        log.warning("skipped %s: %s", case_id, reason)
    if run_dir is None:
        log.warning("%d item(s) skipped; pass run_dir to keep the list in a file", len(bad))
        return
    path = Path(run_dir) / "skipped.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["case_id", "reason"])
        writer.writerows(bad)
    log.warning("%d item(s) skipped; listed in %s", len(bad), path)
