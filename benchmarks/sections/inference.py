"""Batch inference end to end from files: ``medtl.deploy.predict_batch`` on a folder.

Inputs are generated once in the work folder from real images: PNG chest X-rays (the cxr_nih images,
re-saved; beyond the 738 originals, flipped and shifted copies so every file differs) and IXI NIfTI
volumes (copied). The models are random-weight medtl checkpoints of the default architectures (2D
ResNet-18 on the cxr preset at 128 px; the loading section's lifted 3D ResNet-18 on the mri3d preset).

Each measured run is its own process (``python -m benchmarks.sections.inference``): it loads the
model, then times, side by side in that process, the model's forward pass alone on a random batch of
the same shape (before and after), one ``predict_batch`` call (discovery, reading, preprocessing, the
model, the results table and ledger) and, on a sample of the inputs, reading + preprocessing alone
(``SeriesLoader``, one process). The throughput ratio (predict_batch / forward alone, target 0.9) is
taken per process, so machine load that changes between processes falls on both. Peak resident memory is the child's own ``VmHWM`` from
``/proc/self/status`` (the high-water mark of its address space since ``exec``). The rusage
``ru_maxrss`` (from ``os.wait4``, or ``RUSAGE_CHILDREN``) is kept in the JSON but not used: Linux
carries the forking parent's peak into it, so a large benchmark process would mask the child's own.
100 and 1000 inputs are compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, Row, Settings, data_root, fmt_rate, manifest, median, spread, status

TARGET_GROWTH = 0.10
TARGET_RATIO = 0.90  # predict_batch throughput / the model's forward throughput at the same batch size
BATCH = {"2d": 16, "3d": 4}  # images (volumes) per forward pass, in predict_batch and in the forward-alone timing


# ------------------------------------------------------------------------------------------ inputs


def _made_once(folder: Path, n: int, fill) -> Path:
    """``folder`` with ``n`` generated inputs: ``fill(folder)`` runs unless an earlier run finished it."""
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    fill(folder)
    done.write_text(str(n))
    return folder


def make_pngs(root: Path, folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    def fill(folder: Path) -> None:
        sources = [root / r.path for r in manifest("cxr_nih")]
        for i in range(n):
            src = sources[i % len(sources)]
            img = np.asarray(Image.open(src).convert("L"))
            k = i // len(sources)
            if k % 2 == 1:
                img = img[:, ::-1]
            if k >= 2:
                img = np.roll(img, 3 * k, axis=0)
            Image.fromarray(np.ascontiguousarray(img)).save(folder / f"img{i:05d}.png")

    return _made_once(folder, n, fill)


def make_volumes(root: Path, folder: Path, n: int) -> Path:
    def fill(folder: Path) -> None:
        for i, r in enumerate(list(manifest("mri3d_ixi"))[:n]):
            shutil.copyfile(root / r.path, folder / f"vol{i:04d}.nii.gz")

    return _made_once(folder, n, fill)


def make_models(s: Settings, folder: Path) -> dict[str, Path]:
    import torch

    from benchmarks.sections.loading import model_3d
    from medtl.models import Head, Model, build_encoder, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    arch = "resnet10" if s.smoke else "resnet18"
    size = 32 if s.smoke else 128
    vol = {"spacing": [8.0, 8.0, 8.0], "volume_shape": [16, 16, 16]} if s.smoke else \
        {"spacing": [2.0, 2.0, 2.0], "volume_shape": [80, 96, 80]}
    torch.manual_seed(0)
    enc = build_encoder(arch, stem_stride=2)
    p2 = save_checkpoint(folder / f"cxr_{arch}_{size}.pt", Model(enc, Head(enc.out_features, "binary")),
                         intensity={"preset": "cxr", "image_size": size, "clahe": False},
                         label_names=["no_finding", "pneumonia"], image_size=[size, size])
    m3 = model_3d(arch, s.lift3d, s.smoke)
    p3 = save_checkpoint(folder / f"mri3d_{arch}_{s.lift3d}.pt", m3, intensity={"preset": "mri3d", **vol},
                         label_names=["F", "M"], image_size=vol["volume_shape"])
    return {"2d": Path(p2), "3d": Path(p3)}


# ------------------------------------------------------------------------------------------ child


def _forward_rate(predictor, shape, batches: int) -> float:
    """Inputs per second of ``predictor.predict`` alone on a random batch of ``shape`` (what the model costs)."""
    import torch

    x = torch.randn(*shape)
    predictor.predict(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        predictor.predict(x)
    return batches * shape[0] / (time.perf_counter() - t0)


def _prepare_rate(predictor, folder: Path, n: int) -> float:
    """Inputs per second of reading + preprocessing alone (``SeriesLoader``, one process), first ``n`` series."""
    from medtl.deploy.batch import discover
    from medtl.deploy.inputs import SeriesLoader

    loader = SeriesLoader(predictor.preset, predictor.preset_options, predictor.spatial_dims)
    series = discover(folder, volume=predictor.spatial_dims == 3)[:n]
    t0 = time.perf_counter()
    images = sum(loader(s).shape[0] for s in series)
    return images / (time.perf_counter() - t0)


def child(args: dict) -> None:
    """Runs in its own process: load the model, time predict_batch (and the model and the preprocessing
    alone, side by side), report JSON to ``args['report']``."""
    import torch

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    from medtl.deploy import load_model, predict_batch

    t_start = time.perf_counter()
    predictor = load_model(args["model"], device=args["device"])
    load_seconds = time.perf_counter() - t_start
    size = predictor.preprocess.get("volume_shape") if predictor.spatial_dims == 3 else \
        [predictor.preprocess["image_size"]] * 2
    bs = int(args["batch_size"])
    shape = (bs, 1, *size)
    fwd_batches = int(args.get("forward_batches", 0))
    t0 = time.perf_counter()
    fwd = [_forward_rate(predictor, shape, fwd_batches)] if fwd_batches else []
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = predict_batch(predictor, args["input"], args["out"], batch_size=bs, workers=args["workers"],
                           progress=False)
    seconds = time.perf_counter() - t0
    if fwd_batches:
        fwd.append(_forward_rate(predictor, shape, fwd_batches))
    prep = _prepare_rate(predictor, Path(args["input"]), int(args["prepare_n"])) if args.get("prepare_n") else None
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])  # kB
    except OSError:
        pass
    import resource

    Path(args["report"]).write_text(json.dumps({
        "seconds": seconds, "load_seconds": load_seconds, "forward_seconds": t_fwd, "ok": result.ok,
        "errors": result.errors, "batch_size": bs, "workers": args["workers"], "forward_rates": fwd,
        "forward_rate": sum(fwd) / len(fwd) if fwd else None, "prepare_rate": prep,
        "vmhwm_kb": hwm, "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _spawn(s: Settings, model: Path, folder: Path, work: Path, tag: str, *, batch_size: int, workers=None,
           forward_batches: int = 0, prepare_n: int = 0) -> dict:
    """One child run (its own report, plus its rusage from os.wait4)."""
    import torch

    out = Path(tempfile.mkdtemp(prefix=f"out-{tag}-", dir=work))
    report = out.with_suffix(".json")
    args = {"model": str(model), "input": str(folder), "out": str(out), "device": s.device, "batch_size": batch_size,
            "workers": s.workers if workers is None else workers, "report": str(report),
            "threads": torch.get_num_threads(), "forward_batches": forward_batches, "prepare_n": prepare_n}
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "benchmarks.sections.inference", json.dumps(args)], cwd=REPO,
                             stdout=f, stderr=subprocess.STDOUT)
        _, code, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(code)
    wall = time.perf_counter() - t0
    if p.returncode != 0 or not report.exists():
        raise RuntimeError(f"inference child failed ({p.returncode}); log: {log}\n{log.read_text()[-3000:]}")
    data = json.loads(report.read_text())
    data["wait4_maxrss_kb"] = usage.ru_maxrss
    data["process_wall_s"] = wall
    shutil.rmtree(out, ignore_errors=True)
    return data


# ------------------------------------------------------------------------------------------ section


def run(s: Settings) -> list[Row]:
    root = data_root(s)
    work = s.work_dir / "inference"
    small, large, n_vol = (4, 40, 2) if s.smoke else (100, 1000, 20)
    pngs_small = make_pngs(root, work / f"png{small}", small)
    pngs_large = make_pngs(root, work / f"png{large}", large)
    vols = make_volumes(root, work / f"nii{n_vol}", n_vol)
    models = make_models(s, work / "models")
    runs = {small: [], large: []}
    vol_runs = []
    reps = 1 if s.smoke else max(1, min(3, s.repeats))
    b2, b3 = BATCH["2d"], BATCH["3d"]
    fwd2, fwd3 = (1, 1) if s.smoke else (12, 3)  # forward-alone batches, before and after each predict_batch
    for _ in range(reps):  # sizes side by side
        # Both sizes do the same work around predict_batch, so their peak memory compares.
        runs[small].append(_spawn(s, models["2d"], pngs_small, work, f"{small}", batch_size=b2,
                                  forward_batches=fwd2, prepare_n=small))
        runs[large].append(_spawn(s, models["2d"], pngs_large, work, f"{large}", batch_size=b2,
                                  forward_batches=fwd2, prepare_n=small))
        vol_runs.append(_spawn(s, models["3d"], vols, work, "vol", batch_size=b3, forward_batches=fwd3,
                               prepare_n=min(8, n_vol)))

    def rate(rs, n):
        return [n / r["seconds"] for r in rs]

    def rss(rs):  # MiB, the child's own peak: VmHWM (rusage maxrss also counts the parent's size at fork)
        return median([(r["vmhwm_kb"] or r["wait4_maxrss_kb"]) / 1024 for r in rs])

    for rs, n in ((runs[small], small), (runs[large], large), (vol_runs, n_vol)):
        bad = [r for r in rs if r["ok"] != n]
        if bad:
            raise RuntimeError(f"predict_batch predicted {bad[0]['ok']} of {n} inputs ({bad[0]['errors']} errors)")
    r_small, r_large, r_vol = rate(runs[small], small), rate(runs[large], large), rate(vol_runs, n_vol)
    f2, f3 = [r["forward_rate"] for r in runs[large]], [r["forward_rate"] for r in vol_runs]
    p2, p3 = [r["prepare_rate"] for r in runs[large]], [r["prepare_rate"] for r in vol_runs]
    ratio2 = [a / b for a, b in zip(r_large, f2)]  # per process: load that drifts between processes cancels
    ratio3 = [a / b for a, b in zip(r_vol, f3)]
    # Without overlap, reading + preprocessing and the model take turns: the pipeline can at best reach
    # 1 / (1/prepare + 1/forward) of the inputs per second; as a fraction of the forward rate:
    floor2 = [1 / (1 / p + 1 / f) / f for p, f in zip(p2, f2)]
    floor3 = [1 / (1 / p + 1 / f) / f for p, f in zip(p3, f3)]
    m_small, m_large = rss(runs[small]), rss(runs[large])
    growth = (m_large - m_small) / m_small
    data = {"runs": {str(k): v for k, v in runs.items()}, "volumes": vol_runs, "batch": BATCH}
    return [
        Row("inference", f"2D PNG -> CSV, {small} inputs (cxr resnet 128 px, batch {b2})",
            fmt_rate(median(r_small), "img/s") + spread(r_small), data=data),
        Row("inference", f"2D PNG -> CSV, {large} inputs", fmt_rate(median(r_large), "img/s") + spread(r_large)),
        Row("inference", f"2D model forward alone (batch {b2})", fmt_rate(median(f2), "img/s") + spread(f2)),
        Row("inference", "2D read + preprocess alone (PNG 256 px -> 128 px, 1 process)",
            fmt_rate(median(p2), "img/s") + spread(p2)),
        Row("inference", "2D serial bound: 1/(1/prepare + 1/forward) / forward", f"{median(floor2):.2f}x"),
        Row("inference", f"2D throughput ratio: predict_batch / model forward ({large} inputs)",
            f"{median(ratio2):.2f}x" + spread(ratio2) + f"; ratio of the medians above {median(r_large) / median(f2):.2f}x",
            f">= {TARGET_RATIO}x", status(median(ratio2) >= TARGET_RATIO)),
        Row("inference", f"3D NIfTI -> CSV, {n_vol} volumes ({s.lift3d}, batch {b3})",
            fmt_rate(median(r_vol), "vol/s") + spread(r_vol)),
        Row("inference", f"3D model forward alone (batch {b3})", fmt_rate(median(f3), "vol/s") + spread(f3)),
        Row("inference", "3D read + preprocess alone (gunzip, RAS, 2 mm, z-score, crop; 1 process)",
            fmt_rate(median(p3), "vol/s") + spread(p3)),
        Row("inference", "3D serial bound: 1/(1/prepare + 1/forward) / forward", f"{median(floor3):.2f}x"),
        Row("inference", "3D throughput ratio: predict_batch / model forward",
            f"{median(ratio3):.2f}x" + spread(ratio3) + f"; ratio of the medians above {median(r_vol) / median(f3):.2f}x",
            f">= {TARGET_RATIO}x", status(median(ratio3) >= TARGET_RATIO)),
        Row("inference", f"peak RSS, {small} inputs", f"{m_small:,.0f} MiB"),
        Row("inference", f"peak RSS, {large} inputs", f"{m_large:,.0f} MiB"),
        Row("inference", f"peak RSS growth {small} -> {large} inputs", f"{100 * growth:+.1f}%", "< +10%",
            status(growth < TARGET_GROWTH)),
    ]


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
