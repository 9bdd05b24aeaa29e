"""Shared pieces of the benchmark: settings, clocks, rows, the environment header, the data root."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Settings:
    smoke: bool = False
    repeats: int = 5  # timed repeats per option (medians); warm-up runs come on top
    device: str = "cpu"
    amp: str = "off"  # "off" | "bf16" | "fp16": autocast in the timed training/inference steps
    channels_last: bool = False  # channels_last(_3d) memory in the timed model steps (trainer, models, loading)
    pin_memory: bool = False  # DataLoader pin_memory + non_blocking copies (GPU)
    compile: bool = False  # add torch.compile variants where it applies (options section)
    workers: int = 0  # DataLoader workers (0 = the pipeline's default)
    data_root: Path = field(default_factory=lambda: REPO / "../shared/data")
    work_dir: Path = field(default_factory=lambda: Path("/tmp/medtl-bench"))
    lift3d: str = "i3d"  # the 3D model of the loading section
    e2e_repeats: int = 1  # each repeat trains two models on the full task (about 10 minutes on 2 cores)
    demo_repeats: int = 1
    demo_active_wait: bool = False  # also time the busy demo with OpenMP spin-waiting (the old default)

    @property
    def dev(self) -> torch.device:
        return torch.device(self.device)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]

    @property
    def inner(self) -> int:
        """Steps per timed call: one on CPU (a step takes 0.1-10 s); ten on a GPU (a step takes ms)."""
        return 10 if self.dev.type == "cuda" else 1

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_root"], d["work_dir"] = str(self.data_root), str(self.work_dir)
        return d


# ------------------------------------------------------------------------------------------ rows


@dataclass
class Row:
    section: str
    name: str
    value: str  # formatted for the table
    target: str = "-"  # what it should be ("-" for information only)
    status: str = "info"  # "met" | "MISSED" | "info" | "n/a"
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers for the JSON


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def render_table(rows: list[Row]) -> str:
    head = ("section", "measurement", "value", "target", "status")
    cells = [head] + [(r.section, r.name, r.value, r.target, r.status) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(head))]
    widths[2] = min(widths[2], 60)
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)), line]
    for c in cells[1:]:
        out.append("  ".join(str(v).ljust(w) for v, w in zip(c, widths)).rstrip())
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ clocks


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a clock read after it covers that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(options: dict[str, Callable[[], Any]], repeats: int, device, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each option, ``repeats`` times, side by side: every round runs every option once, in
    an order rotated per round (so drift in machine speed falls on all options alike)."""
    names = list(options)
    for _ in range(warmup):
        for n in names:
            options[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            times[n].append(timed(options[n], device))
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: list[float]) -> str:
    """min-max range of ``xs`` relative to the median, for the reader to judge noise."""
    if len(xs) < 2:
        return ""
    m = median(xs)
    return f" (±{100 * (max(xs) - min(xs)) / 2 / m:.0f}%)" if m > 0 else ""


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.1f} {unit}" if x < 100 else f"{x:,.0f} {unit}"


# ------------------------------------------------------------------------------------------ models


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: Settings,
                  amp_dtype: torch.dtype | None = None, lr: float = 1e-3) -> Callable[[], None]:
    """``settings.inner`` optimiser steps of ``model`` (logits) on the fixed batch ``(x, y)``: forward,
    loss, backward, AdamW. Divide its time by ``settings.inner`` for one step."""
    import torch.nn.functional as F

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    dev = settings.dev

    def step():
        model.train()
        for _ in range(settings.inner):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            opt.step()

    return step


def to_layout(model: torch.nn.Module, x: torch.Tensor, channels_last: bool):
    """Channels-last model and input: each 4D parameter channels_last, each 5D one channels_last_3d (a
    2.5D or ACS model holds 2D kernels inside a 3D model, which ``Module.to(memory_format=...)`` refuses)."""
    if not channels_last or x.ndim not in (4, 5):
        return model, x
    for p in model.parameters():
        if p.dim() in (4, 5):
            p.data = p.data.contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.channels_last_3d)
    return model, x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)


# ------------------------------------------------------------------------------------------ environment


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(settings: Settings) -> dict[str, Any]:
    import monai
    import numpy

    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "mkldnn_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    with contextlib.suppress(Exception):
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        env["git_dirty"] = bool(dirty)
    return env


def render_environment(env: dict[str, Any], settings: Settings) -> str:
    lines = [
        (f"CPU: {env['cpu']}; {env['usable_cores']} usable of {env['logical_cores']} logical cores; "
         f"torch threads {env['torch_threads']} (inter-op {env['torch_interop_threads']}); load average "
         f"{env['load_average']}"),
        f"python {env['python']}, torch {env['torch']}, monai {env['monai']}, numpy {env['numpy']}; {env['platform']}",
    ]
    if "gpu" in env:
        lines.append(f"GPU: {env['gpu']} (CUDA {env['cuda']})")
    lines.append(f"device {settings.device}, amp {settings.amp}, channels_last {settings.channels_last}, pin_memory "
                 f"{settings.pin_memory}, compile {settings.compile}, workers {settings.workers}, repeats "
                 f"{settings.repeats}, git {env.get('git', '?')}{' (dirty)' if env.get('git_dirty') else ''}")
    if settings.smoke:
        lines.append("SMOKE MODE: tiny sizes; the numbers only show that every section runs, not performance")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ data


def data_root(settings: Settings) -> Path:
    root = settings.data_root
    if not root.is_absolute():
        root = (REPO / root).resolve()
    if not (root / "README.md").exists():
        raise SystemExit(f"data root {root} not found: pass --data-root or set MEDTL_DATA_ROOT")
    return root


def manifest(name: str, n: int | None = None, split: str | None = None):
    """A project manifest (data_manifests/NAME.csv), optionally one split and the first ``n`` rows of
    each label in turn (label-balanced, reproducible)."""
    from medtl.data.manifest import Manifest

    m = Manifest.load(REPO / "data_manifests" / f"{name}.csv")
    if split is not None:
        m = m.select(split=split)
    if n is not None and n < len(m):
        by_label: dict[str, list] = {}
        for r in m:
            by_label.setdefault(r.label, []).append(r)
        rows, i = [], 0
        while len(rows) < n:
            for label in sorted(by_label):
                if i < len(by_label[label]) and len(rows) < n:
                    rows.append(by_label[label][i])
            i += 1
        m = Manifest(rows, list(m.label_names), dict(m.meta), m.source)
    return m


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def python_cmd() -> list[str]:
    return [sys.executable]
