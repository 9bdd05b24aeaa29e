"""``medtl demo``: the cross-domain scenario end to end on synthetic data the package generates.

It needs no downloads and no real data, runs in minutes on 2 CPU cores, and grows with the
project: each stage that exists runs, in order, and writes into the demo folder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from medtl.data.build import build_manifest
from medtl.data.check import check_manifest
from medtl.data.datasets import build_dataset
from medtl.data.synthetic import write_synthetic_source

log = logging.getLogger(__name__)


def make_demo_data(out: Path, seed: int = 0, n_source: int = 120, n_target: int = 60) -> dict[str, Path]:
    """Synthetic chest-X-ray-like source and brain-MRI-like 2D/3D targets, with their manifests."""
    data = out / "data"
    sources = {
        "cxr_synthetic": ("cxr", n_source, 0.0, 64),
        "mri2d_synthetic": ("mri2d", n_target, 0.6, 64),
        "mri3d_synthetic": ("mri3d", n_target // 2, 0.6, 24),
    }
    manifests = {}
    for offset, (name, (kind, n, shift, size)) in enumerate(sources.items()):
        raw = write_synthetic_source(data / name, kind, n, seed=seed + offset, shift=shift, size=size)
        manifest = build_manifest(raw, data, seed=seed)
        manifests[name] = manifest.save(out / "manifests" / f"{name}.csv")
        report = check_manifest(manifest, data)
        if not report.ok:
            raise RuntimeError(report.render())
        print(report.render())
    return manifests


def run_demo(out: str | Path = "medtl-demo", seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifests = make_demo_data(out, seed)
    summary = {"manifests": {k: str(v) for k, v in manifests.items()}}
    from medtl.data import Manifest

    for name, path in manifests.items():
        opts = {"volume_shape": (24, 24, 24)} if name.startswith("mri3d") else {"image_size": 64}
        ds = build_dataset(Manifest.load(path), out / "data", **opts)
        summary.setdefault("loaded", {})[name] = {"items": len(ds), "shape": list(ds[0]["image"].shape)}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"demo finished in {summary['seconds']} s; summary in {out / 'summary.json'}")
    return out / "summary.json"
