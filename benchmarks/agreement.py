"""``medtl predict`` against the pipeline's own evaluation: one table row and one scatter per job.

    python benchmarks/agreement.py runs/cxr_to_mri3d --data-root ../shared/data --out docs/figures/predict_agreement.png

For every job checkpoint (``transfer/<task>/<frac>/<strategy>/seed<n>/best.pt``), ``medtl predict`` runs
on the job's target test split (the manifest the run used) and its output is compared with the job's
``predictions.csv``: ``prob_`` columns for classifiers, ``predicted_<task>`` against ``prediction`` (in the
target's units) for regression; the table gives the largest absolute difference per job (target 1e-4). The
scatter plots every pair of probabilities (pipeline on x, predict on y).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    from medtl.deploy.batch import predict_batch
    from medtl.models.checkpoint import read_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished pipeline run folder")
    p.add_argument("--data-root", type=Path, required=True, help="the data root the run used")
    p.add_argument("--out", type=Path, help="scatter plot PNG to write (default: none)")
    p.add_argument("--max-jobs", type=int, default=None, help="only the first N jobs (default: all)")
    args = p.parse_args(argv)
    env = json.loads((args.run / "environment.json").read_text())
    manifest = Path(env["manifests"]["target"])
    jobs = sorted(args.run.glob("transfer/*/*/*/seed*/best.pt"))[: args.max_jobs]
    xs, ys, rows = [], [], []
    for ckpt in jobs:
        meta = read_checkpoint(ckpt)["meta"]
        regression = meta.get("task") == "regression"
        job = pd.read_csv(ckpt.parent / "predictions.csv", dtype={"case_id": str})
        test = job[job["split"] == "test"].set_index("case_id")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = predict_batch(ckpt, manifest, Path(tmp) / "out", data_root=args.data_root, split="test",
                                   progress=False)
            got = pd.read_csv(result.csv, dtype={"case_id": str}).set_index("case_id").loc[test.index]
        if regression:  # values in the target's units: predict's predicted_<task> against the job's prediction
            a = test[["prediction"]].to_numpy(float)
            b = got[[f"predicted_{meta.get('task_name') or 'value'}"]].to_numpy(float)
        else:
            cols = [c for c in test.columns if c.startswith("prob_") and test[c].notna().any()]
            a, b = test[cols].to_numpy(float), got[cols].to_numpy(float)
            xs.append(a.ravel()), ys.append(b.ravel())
        rows.append((ckpt.relative_to(args.run / "transfer").parent.as_posix(), len(test), float(np.abs(a - b).max()),
                     int((got["status"] == "ok").sum()), time.perf_counter() - t0))
    print(f"{'job':<40} {'n test':>6} {'max |diff|':>11} {'ok rows':>7} {'seconds':>8}")
    for job, n, diff, ok, sec in rows:
        print(f"{job:<40} {n:>6} {diff:>11.2e} {ok:>7} {sec:>8.1f}")
    worst = max(r[2] for r in rows)
    print(f"{len(rows)} jobs; largest difference {worst:.2e} (target <= 1e-4; regression in the target's units)")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(np.concatenate(xs), np.concatenate(ys), s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("probability in the pipeline's predictions.csv")
        ax.set_ylabel("probability from medtl predict on best.pt")
        ax.set_title(f"{args.run.name}: {len(rows)} jobs, max |diff| {worst:.1e}", fontsize=9)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
