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
from medtl.data.synthetic import write_synthetic_source
from medtl.errors import MedtlError
from medtl.progress import format_seconds

log = logging.getLogger(__name__)


def make_demo_data(out: Path, seed: int = 0, n_source: int = 120, n_target: int = 100) -> dict[str, Path]:
    """Synthetic chest-X-ray-like source and brain-MRI-like 2D target, with their manifests."""
    data = out / "data"
    sources = {
        "cxr_synthetic": ("cxr", n_source, 0.0, 64),
        "mri2d_synthetic": ("mri2d", n_target, 0.6, 64),
    }
    manifests = {}
    for offset, (name, (kind, n, shift, size)) in enumerate(sources.items()):
        raw = write_synthetic_source(data / name, kind, n, seed=seed + offset, shift=shift, size=size)
        # generated images are alike by design and have no copies (the chest-X-ray-like ones' thumbnails correlate
        # 0.98-0.996): a correlation threshold would join them all, so only identical files are checked
        manifest = build_manifest(raw, data, seed=seed, group_near_copies=False)
        manifests[name] = manifest.save(out / "manifests" / f"{name}.csv")
        report = check_manifest(manifest, data, near_copy_correlation=1.0, cut_to_head=False)
        if not report.ok:
            raise MedtlError(f"generated data failed its check:\n{report.render()}", manifest.source)
        print(report.render())
    return manifests


DEMO_PIPELINE = """\
# The demo pipeline: synthetic chest-X-ray-like source -> synthetic brain-MRI-like 2D target.
name: demo
description: medtl demo on generated data (chest-X-ray-like source, brain-MRI-like 2D target)
synthetic: true  # the report says so at its top
seeds: [0, 1]
source: {manifest: manifests/cxr_synthetic.csv, image_size: 64}
pretrain: {mode: supervised, epochs: 4, batch_size: 16, lr: 0.002}
target: {manifest: manifests/mri2d_synthetic.csv, image_size: 64}
tasks: [{name: tumor}]
encoder: {arch: resnet10, stem_stride: 2}
train: {epochs: 4, batch_size: 16, patience: null, device: cpu}
strategies:
  - scratch
  - feature_extraction
  - full
  - lp_ft
  - dann
label_fractions: [0.25, 1.0]
similarity: {max_images: 60}
evaluation: {bootstrap: 500}
"""


def run_demo(out: str | Path = "medtl-demo", seed: int = 0, progress: bool = True) -> Path:
    """Generate the data, run the demo pipeline (resumable) and return its HTML report's path."""
    from medtl.engine.distributed import require_single_process
    from medtl.lock import OutputLock
    from medtl.pipeline import run_pipeline

    require_single_process("medtl demo")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedtlError("--out must be a folder", out)
    started = time.perf_counter()
    with OutputLock(out, "medtl demo"):  # the data too: a second demo would write the same files
        record = out / "demo_seed.json"  # the data's seed: a folder resumes only the demo it holds
        if (out / "manifests" / "mri2d_synthetic.csv").exists():
            made = json.loads(record.read_text())["seed"] if record.exists() else None
            if made is not None and made != seed:
                raise MedtlError(f"this folder holds the demo of --seed {made}; give that seed to resume it, or "
                                 "another --out for this one", out)
        else:
            make_demo_data(out, seed)
            record.write_text(json.dumps({"seed": seed}) + "\n")
        config = out / "demo.yaml"
        config.write_text(DEMO_PIPELINE)
        html = run_pipeline(config, out / "data", out / "run", progress=progress)
    seconds = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps({"report": str(html), "seconds": round(seconds, 1)}, indent=2) + "\n")
    print(f"demo finished in {format_seconds(seconds)} (data generation included); open {html}")
    return html
