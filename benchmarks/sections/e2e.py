"""End to end: time to reach the plain loop's test accuracy, plain MONAI/PyTorch script vs medtl's fast path.

Task: the project's scenario at small scale: an encoder pretrained on chest X-rays (cxr_nih train
split, supervised, untimed, cached in the work folder) transferred to brain MRI tumour / no tumour
(mri2d_yesno, its manifest's train and test splits) by a linear probe (frozen encoder, linear head),
both at 64 px. Both arms start from the same pretraining recipe (each arm's encoder pretrained with
its own stem stride), the same head initialisation, optimiser (AdamW, lr 1e-3, weight decay 1e-4,
constant rate) and batch size (32).

- plain: what a plain MONAI/PyTorch script does: MONAI ResNet with its default stride-1 stem, a
  ``monai.data.Dataset`` without caching (the whole transform chain, reading included, runs on
  every access, augmentation too), the frozen encoder run under ``no_grad`` on every batch of every
  epoch;
- fast: medtl's path: stride-2 stem, ``build_dataset(cache="memory", train=False)`` (deterministic
  transforms once), features computed once by ``medtl.engine.feature_cache`` (channels_last unless
  ``--e2e-channels-last off``), the head trained on them by the project's trainer.

The clock runs over data preparation, feature extraction and training; it stops while each epoch's
test accuracy is measured (both arms alike). The plain arm runs its epochs; its final test accuracy A
is the goal. Each arm's time is the clock at the end of its first epoch with test accuracy >= A.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Row, Settings, data_root, manifest, median, status

LR, WD = 1e-3, 1e-4
TARGET = 2.0


class Clock:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.off = 0.0

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.off += time.perf_counter() - t

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.off


def pretrained(s: Settings, root: Path, arch: str, size: int, stride: int, n: int | None, epochs: int) -> Path:
    """A supervised cxr_nih encoder (cached in the work folder; reused when present)."""
    from medtl.engine.pretrain import pretrain

    src = manifest("cxr_nih", n, split="train")
    out = s.work_dir / "e2e" / f"pretrain-{arch}-{size}px-stride{stride}-{epochs}ep-{len(src)}"
    path = out / "model.pt"
    if not path.exists():
        pretrain(src, root, out, image_size=size, arch=arch, stem_stride=stride, epochs=epochs, batch_size=32,
                 lr=LR, seed=0, progress=False, device=s.device, val_split=None)
    return path


def _encoder(arch: str, stride: int, weights: Path):
    from medtl.models import build_encoder, load_weights

    enc = build_encoder(arch, stem_stride=stride)
    load_weights(enc, weights)
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


def _head(seed: int):
    from medtl.models import Head

    torch.manual_seed(seed)
    return Head(512, "binary")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1).cpu() == labels.cpu()).float().mean())


def plain_arm(s: Settings, root: Path, weights: Path, arch: str, size: int, train_m, test_m, epochs: int, batch: int,
              seed: int) -> list[tuple[float, float]]:
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    from medtl.data.datasets import manifest_items
    from medtl.data.transforms import preset

    dev = s.dev
    enc = _encoder(arch, 1, weights).to(dev)
    head = _head(seed).to(dev)
    clock = Clock()
    det, rand = preset("mri2d", True, image_size=size)
    train_ds = Dataset(manifest_items(train_m, root), Compose(det + rand))
    test_ds = Dataset(manifest_items(test_m, root), Compose(preset("mri2d", False, image_size=size)[0]))
    loader = DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=s.workers,
                        pin_memory=s.pin_memory and dev.type == "cuda", generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WD)
    amp = {"device_type": dev.type, "dtype": s.amp_dtype, "enabled": s.amp_dtype is not None}
    history = []
    for _ in range(epochs):
        head.train()
        for b in loader:
            x = b["image"].as_tensor().to(dev, non_blocking=True)
            y = b["label"].to(dev, non_blocking=True)
            with torch.no_grad(), torch.autocast(**amp):
                f = enc(x)
            with torch.autocast(**amp):
                logits = head(f.float())
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with clock.paused():
            head.eval()
            logits, labels = [], []
            with torch.no_grad(), torch.autocast(**amp):
                for b in DataLoader(test_ds, batch_size=64):
                    logits.append(head(enc(b["image"].as_tensor().to(dev))).float())
                    labels.append(b["label"])
            acc = _accuracy(torch.cat(logits), torch.cat(labels))
        history.append((clock.elapsed(), acc))
    return history


def fast_arm(s: Settings, root: Path, weights: Path, arch: str, size: int, train_m, test_m, max_epochs: int,
             batch: int, seed: int, goal: float) -> list[tuple[float, float]]:
    from medtl.data.datasets import build_dataset
    from medtl.engine import StopTraining
    from medtl.engine.feature_cache import extract_features
    from medtl.engine.probe import train_head

    dev = s.dev
    enc = _encoder(arch, 2, weights)
    head = _head(seed)
    cl = s.e2e_channels_last
    opts = {"batch_size": 64, "device": dev, "amp_dtype": s.amp_dtype, "channels_last": cl,
            "pin_memory": s.pin_memory and dev.type == "cuda"}
    clock = Clock()
    train_ds = build_dataset(train_m, root, "mri2d", False, cache="memory", image_size=size)
    train = extract_features(enc, train_ds, **opts)
    with clock.paused():
        test_ds = build_dataset(test_m, root, "mri2d", False, cache="memory", image_size=size)
        test = extract_features(enc, test_ds, **opts)
    history: list[tuple[float, float]] = []

    def check(record):
        with clock.paused():
            was = head.training
            head.eval()
            with torch.no_grad():
                acc = _accuracy(head(test.features.to(dev)).float(), test.labels)
            head.train(was)
        history.append((clock.elapsed(), acc))
        if acc >= goal:
            raise StopTraining

    train_head(head, train, None, batch_size=batch, seed=seed, hparams={"lr": LR, "weight_decay": WD},
               epochs=max_epochs, device=s.device, amp=s.amp, scheduler="constant", restore_best=False,
               callbacks=[check])
    return history


def first_reaching(history: list[tuple[float, float]], goal: float) -> float:
    return next((t for t, acc in history if acc >= goal - 1e-9), math.inf)


def run(s: Settings) -> list[Row]:
    root = data_root(s)
    if s.smoke:
        arch, size, batch, n_src, pre_ep, epochs, max_fast = "resnet10", 32, 8, 16, 1, 2, 4
        train_m, test_m = manifest("mri2d_yesno", 16, "train"), manifest("mri2d_yesno", 8, "test")
    else:
        arch, size, batch, n_src, pre_ep, epochs, max_fast = "resnet18", 64, 32, None, 3, 10, 60
        train_m, test_m = manifest("mri2d_yesno", None, "train"), manifest("mri2d_yesno", None, "test")
    weights = {st: pretrained(s, root, arch, size, st, n_src, pre_ep) for st in (1, 2)}
    reps = 1 if s.smoke else max(1, s.e2e_repeats)
    results = []
    for r in range(reps):
        plain = plain_arm(s, root, weights[1], arch, size, train_m, test_m, epochs, batch, seed=r)
        goal = plain[-1][1]
        fast = fast_arm(s, root, weights[2], arch, size, train_m, test_m, max_fast, batch, r, goal)
        t_plain, t_fast = first_reaching(plain, goal), first_reaching(fast, goal)
        results.append({"plain": plain, "fast": fast, "goal": goal, "t_plain": t_plain, "t_fast": t_fast,
                        "speedup": t_plain / t_fast if t_fast > 0 else math.inf})
    t_plain = median([x["t_plain"] for x in results])
    t_fast = median([x["t_fast"] for x in results])
    speedup = median([x["speedup"] for x in results])
    goals = [x["goal"] for x in results]
    reached = sum(math.isfinite(x["t_fast"]) for x in results)
    plain_total = median([x["plain"][-1][0] for x in results])
    task = f"cxr_nih -> mri2d_yesno linear probe, {arch} {size}px, {len(train_m)} train / {len(test_m)} test"
    data = {"arch": arch, "image_size": size, "batch": batch, "epochs_plain": epochs, "max_epochs_fast": max_fast,
            "repeats": results, "channels_last": s.e2e_channels_last}
    fast_text = f"{t_fast:.1f} s" if math.isfinite(t_fast) else "never"
    return [
        Row("e2e", f"goal: plain loop's final test accuracy ({task})",
            " / ".join(f"{g:.3f}" for g in goals), data=data),
        Row("e2e", f"plain MONAI loop (stride 1, no cache, {epochs} epochs): time to goal",
            f"{t_plain:.1f} s (all epochs {plain_total:.1f} s)"),
        Row("e2e", "medtl fast path (feature cache, stride 2): time to goal",
            f"{fast_text} (reached in {reached}/{len(results)})"),
        Row("e2e", "time to plain loop's accuracy: plain / fast", f"{speedup:.1f}x", ">= 2x", status(speedup >= TARGET)),
    ]
