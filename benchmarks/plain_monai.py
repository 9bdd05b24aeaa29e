"""The baseline a competent user writes: a plain MONAI training script, the way MONAI's tutorials do it.

4-class brain tumour MRI (mri2d_tumor4), ResNet-18 with the stride-2 stem, 128 px, grayscale, a
``CacheDataset`` (decode + resize cached once, random flips and a small affine per access), AdamW
1e-3 with a cosine schedule, batch 32, 4 epochs; then accuracy and macro AUROC on the test images.
Nothing of medtl is used: the end-to-end benchmark (``benchmarks/sections/e2e.py``) runs it beside
medtl's fastest recipe on the same split.

    python benchmarks/plain_monai.py --data-root ../shared/data --out plain.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, DataLoader
from monai.networks.nets import resnet18
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    RandAffined,
    RandFlipd,
    Resized,
    ScaleIntensityd,
)
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data_manifests" / "mri2d_tumor4.csv"


def rows(split: str, data_root: Path, manifest: Path = MANIFEST, limit: int | None = None):
    """``[{"image": path, "label": class index}]`` of one split, and the class names."""
    with open(manifest, newline="") as f:
        items = [r for r in csv.DictReader(f) if r["split"] == split]
    classes = sorted({r["label"] for r in csv.DictReader(open(manifest, newline=""))})
    items = items[:: max(1, len(items) // limit)][:limit] if limit else items  # spread over the classes
    return [{"image": str(data_root / r["path"]), "label": classes.index(r["label"])} for r in items], classes


def train_and_test(data_root: Path, *, epochs: int = 4, image_size: int = 128, batch_size: int = 32,
                   lr: float = 1e-3, seed: int = 0, limit: int | None = None, manifest: Path = MANIFEST,
                   device: str = "cpu") -> dict:
    """Raw files -> trained model -> scored test split; returns the wall time and the test metrics."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    train_files, classes = rows("train", data_root, manifest, limit)
    test_files, _ = rows("test", data_root, manifest, limit)
    load = [
        LoadImaged("image", reader="PILReader", converter=lambda im: im.convert("L")),
        EnsureChannelFirstd("image"),
        ScaleIntensityd("image"),
        Resized("image", spatial_size=(image_size, image_size), mode="area"),
        NormalizeIntensityd("image"),
    ]
    augment = [
        # PILReader gives (width, height): spatial axis 0 is left-right (axis 1 flipped brains front to back)
        RandFlipd("image", prob=0.5, spatial_axis=0),
        RandAffined("image", prob=0.5, rotate_range=0.17, scale_range=0.1, padding_mode="border"),
    ]
    train_ds = CacheDataset(train_files, Compose(load + augment), progress=False)
    test_ds = CacheDataset(test_files, Compose(load), progress=False)
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_ds, batch_size=64)

    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=len(classes), conv1_t_stride=2).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    for _ in range(epochs):
        model.train()
        for batch in train_loader:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):  # AMP on a GPU
                logits = model(batch["image"].to(device))
            loss = F.cross_entropy(logits.float(), batch["label"].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    train_s = time.perf_counter() - start

    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in test_loader:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = model(batch["image"].to(device))
            probs.append(torch.softmax(logits.float(), 1).cpu())
            labels.append(batch["label"])
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "train_s": train_s, "accuracy": float((p.argmax(1) == y).mean()),
            "macro_auroc": float(roc_auc_score(y, p, multi_class="ovr", average="macro")),
            "n_train": len(train_files), "n_test": len(test_files), "epochs": epochs, "image_size": image_size,
            "seed": seed}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=REPO / "../shared/data")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split (smoke runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--manifest", type=Path, default=MANIFEST)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    result = train_and_test(a.data_root.resolve(), epochs=a.epochs, image_size=a.image_size, seed=a.seed,
                            limit=a.limit, manifest=a.manifest, device=a.device)
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
