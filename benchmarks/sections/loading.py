"""Data loading: volumes per second of the 3D MRI chain on real IXI volumes.

- cold epoch: ``build_dataset(..., cache="none", train=True)``: every item is read from its .nii.gz
  and goes through the whole chain (load, RAS, 2 mm resampling, z-score, crop/pad, augmentation);
- caching pass: building the ``cache="memory"`` dataset (the deterministic part, once);
- cached epochs: the same dataset afterwards (only the random augmentations run);
- model step: one training step (forward, backward, AdamW) of the 3D model at the chain's default
  volume shape, as volumes per second, on in-memory volumes.

The loader is the pipeline's (``monai.data.DataLoader``, shuffled, the pipeline's default
``num_workers=0`` unless ``--workers``); each batch is moved to the device as training would.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import (
    Row,
    Settings,
    data_root,
    fmt_rate,
    manifest,
    median,
    spread,
    status,
    sync,
    to_layout,
    train_step_fn,
)


def _epoch(ds, s: Settings, batch_size: int) -> float:
    from monai.data import DataLoader

    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=s.workers,
                        pin_memory=s.pin_memory and s.dev.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    sync(s.dev)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        x = batch["image"]
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        x.to(s.dev, non_blocking=s.pin_memory)
        n += x.shape[0]
    sync(s.dev)
    return n / (time.perf_counter() - t0)


def model_3d(arch: str, lift_name: str, smoke: bool):
    """The pipeline's 3D encoder (a lifted 2D one, the pipeline's lift options) + binary head."""
    from medtl.models import LIFT_OPTIONS, Head, Model, build_encoder, lift

    enc = lift(build_encoder(arch, stem_stride=2), lift_name, **LIFT_OPTIONS.get(lift_name, {}))
    return Model(enc, Head(enc.out_features, "binary"))


def run(s: Settings) -> list[Row]:
    from medtl.data.datasets import build_dataset

    root = data_root(s)
    n = 4 if s.smoke else None  # all 119 volumes
    m = manifest("mri3d_ixi", n)
    opts = {"volume_shape": (32, 32, 32), "spacing": (4.0, 4.0, 4.0)} if s.smoke else {}
    shape = opts.get("volume_shape", (80, 96, 80))
    batch_size = 2
    epochs = 2 if s.smoke else max(3, s.repeats)

    cold = []
    for _ in range(1 if s.smoke else 2):  # two cold epochs: the second is not helped by a warmer page cache
        ds = build_dataset(m, root, "mri3d", True, cache="none", **opts)
        cold.append(_epoch(ds, s, batch_size))
    t0 = time.perf_counter()
    cached_ds = build_dataset(m, root, "mri3d", True, cache="memory", **opts)
    caching = len(cached_ds) / (time.perf_counter() - t0)
    warm = [_epoch(cached_ds, s, batch_size) for _ in range(epochs)]
    cold_rate, warm_rate = median(cold), median(warm)

    arch = "resnet10" if s.smoke else "resnet18"
    torch.manual_seed(0)
    model = model_3d(arch, s.lift3d, s.smoke).to(s.dev)
    mb = 2
    x = torch.randn(mb, 1, *shape, device=s.dev)
    y = torch.tensor([0, 1] * (mb // 2), device=s.dev)
    model, x = to_layout(model, x, s.channels_last)
    step = train_step_fn(model, x, y, s, s.amp_dtype)
    step()  # warm-up
    times = []
    for _ in range(max(2, s.repeats if not s.smoke else 2)):
        sync(s.dev)
        t = time.perf_counter()
        step()
        sync(s.dev)
        times.append(time.perf_counter() - t)
    model_rate = mb * s.inner / median(times)

    speedup = warm_rate / cold_rate
    what = f"{len(m)} IXI volumes -> {'x'.join(map(str, shape))}, batch {batch_size}, workers {s.workers}"
    data = {"volumes": len(m), "shape": shape, "cold_vol_s": cold, "caching_vol_s": caching, "cached_vol_s": warm,
            "model_step_s": times, "model_batch": mb, "model": f"{arch}+{s.lift3d}"}
    return [
        Row("loading", f"cold epoch, cache='none' ({what})", fmt_rate(cold_rate, "vol/s") + spread(cold), data=data),
        Row("loading", "caching pass (building cache='memory')", fmt_rate(caching, "vol/s")),
        Row("loading", "cached epochs (augmentation only)", fmt_rate(warm_rate, "vol/s") + spread(warm)),
        Row("loading", "cached / cold epoch", f"{speedup:.1f}x", ">= 5x", status(speedup >= 5)),
        Row("loading", f"model step {arch}+{s.lift3d} (train, batch {mb})", fmt_rate(model_rate, "vol/s") + spread(times)),
        Row("loading", "cached loader / model step", f"{warm_rate / model_rate:.1f}x", ">= 1x (loader never the "
            "bottleneck)", status(warm_rate >= model_rate)),
        Row("loading", "cold loader / model step", f"{cold_rate / model_rate:.2f}x"),
    ]
