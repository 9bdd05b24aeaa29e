"""medtl benchmarks: one entry point, one table (and ``--out`` JSON). See docs/performance.md.

    python benchmarks/run.py                      # every section, full size (about 20 min on 2 cores)
    python benchmarks/run.py --smoke              # every section at a tiny size (well under a minute)
    python benchmarks/run.py --sections trainer,options --out bench.json

The trainer and options sections time their options side by side (interleaved rounds, medians); the
others run one after another (docs/performance.md says how each times). Run it on a quiet machine: other
load makes every number slower and noisier.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: no progress bars in the table

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` and `medtl` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTIONS = ("trainer", "loading", "inference", "models", "options", "e2e", "demo")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every section at a tiny size (checks that it runs)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--out", type=Path, help="write the results (rows, raw timings, environment) as JSON here")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per option (default 5; smoke 2)")
    p.add_argument("--e2e-repeats", type=int, default=1, help="repeats of the end-to-end comparison (default 1)")
    p.add_argument("--demo-repeats", type=int, default=1, help="repeats of each demo timing (default 1)")
    p.add_argument("--demo-active-wait", action="store_true",
                   help="also time the busy demo with OMP_WAIT_POLICY=ACTIVE (long spin-waiting, a worst case)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="autocast in the timed steps (trainer, models, loading, e2e); default off")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last(_3d) memory in the timed model steps (trainer, models, loading)")
    p.add_argument("--pin-memory", action="store_true", help="pinned host memory + non_blocking copies (GPU)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (options section)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0, the pipeline default)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice; 1 with --smoke)")
    p.add_argument("--lift3d", choices=("i3d", "acs", "2.5d"), default="i3d", help="3D model of loading/inference")
    p.add_argument("--data-root", type=Path, default=None,
                   help="real data root (default $MEDTL_DATA_ROOT or ../shared/data)")
    p.add_argument("--work-dir", type=Path, default=Path(os.environ.get("MEDTL_BENCH_WORK", "/tmp/medtl-bench")),
                   help="generated inputs, cached pretrained encoders, scratch (default /tmp/medtl-bench)")
    p.add_argument("--keep-going", action="store_true", help="a failing section becomes an error row (default: stop)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from benchmarks.common import Row, Settings, environment, render_environment, render_table, write_json
    from medtl.paths import default_data_root

    if args.threads or args.smoke:
        # Smoke mode checks that everything runs; one thread keeps it quick on a busy machine, where
        # threads spinning against other processes' load can make a step 50x slower.
        torch.set_num_threads(args.threads or 1)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda but no GPU is available", file=sys.stderr)
        return 2
    settings = Settings(
        smoke=args.smoke, repeats=args.repeats or (2 if args.smoke else 5), device=args.device, amp=args.amp,
        channels_last=args.channels_last, pin_memory=args.pin_memory, compile=args.compile, workers=args.workers,
        data_root=args.data_root or default_data_root(), work_dir=args.work_dir / ("smoke" if args.smoke else "full"),
        lift3d=args.lift3d, e2e_repeats=args.e2e_repeats, demo_repeats=args.demo_repeats, demo_active_wait=args.demo_active_wait,
    )
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("medtl", "monai"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    env = environment(settings)
    print("medtl benchmarks")
    print(render_environment(env, settings), flush=True)
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    failed = []
    for name in sections:
        print(f"\n== {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.sections.{name}")
            new = module.run(settings)
        except Exception as err:
            if not args.keep_going:
                raise
            traceback.print_exc()
            new = [Row(name, "section failed", f"{type(err).__name__}: {str(err)[:80]}", "-", "ERROR")]
            failed.append(name)
        seconds[name] = round(time.perf_counter() - t0, 1)
        rows += new
        print(render_table(new), flush=True)
        print(f"({name}: {seconds[name]:.0f} s)", flush=True)

    print("\n== summary")
    print(render_environment(env, settings))
    print()
    print(render_table(rows))
    missed = [r for r in rows if r.status == "MISSED"]
    met = sum(r.status == "met" for r in rows)
    print(f"\n{met} target(s) met, {len(missed)} missed" + (f", section(s) failed: {', '.join(failed)}" if failed else ""))
    if args.out:
        write_json(args.out, {"environment": env, "settings": settings.as_dict(), "section_seconds": seconds,
                              "rows": [r.__dict__ for r in rows]})
        print(f"results written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
