"""``medtl demo`` wall time, in a subprocess (a fresh interpreter, as a user runs it), into a new folder.

The demo pins its own device (``device: cpu`` in its pipeline), so this row measures the CPU path
even on a GPU machine. In smoke mode only the demo's data generation runs (at a tiny size), which
checks the subprocess machinery but is not the measurement: its row says ``n/a``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import REPO, Row, Settings, median, status

TARGET_S = 180.0


def run(s: Settings) -> list[Row]:
    s.work_dir.mkdir(parents=True, exist_ok=True)
    times = []
    for _ in range(1 if s.smoke else max(1, s.demo_repeats)):
        out = tempfile.mkdtemp(prefix="demo-", dir=s.work_dir)
        if s.smoke:
            code = ("import sys; from pathlib import Path; from medtl.demo import make_demo_data; "
                    "make_demo_data(Path(sys.argv[1]), 0, n_source=12, n_target=12)")
            cmd = [sys.executable, "-c", code, out]
        else:
            cmd = [sys.executable, "-m", "medtl", "demo", "--out", out]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
        shutil.rmtree(out, ignore_errors=True)
    t = median(times)
    if s.smoke:
        return [Row("demo", "smoke: demo data generation only (not the demo)", f"{t:.1f} s", "< 180 s (full demo)",
                    "n/a", {"seconds": times})]
    return [Row("demo", "medtl demo wall time (subprocess, fresh folder)", f"{t:.0f} s", "< 180 s",
                status(t < TARGET_S), {"seconds": times})]
