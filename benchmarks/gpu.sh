#!/usr/bin/env bash
# medtl benchmarks on a GPU machine, in one short run (a few minutes on one current data-centre GPU):
# the same sections and table as the CPU run, with the GPU settings on: AMP bf16 autocast, channels_last
# (channels_last_3d for volumes), pinned host memory with non-blocking copies, DataLoader workers, and
# optionally torch.compile (COMPILE=1, adds a compiled row to the options section; compiling takes
# about a minute).
#
#   bash benchmarks/gpu.sh                        # writes bench-gpu.json
#   COMPILE=1 OUT=/tmp/gpu.json bash benchmarks/gpu.sh
#   SECTIONS=trainer,options bash benchmarks/gpu.sh --repeats 5
#
# Environment: PYTHON (default .venv/bin/python, else python), SECTIONS (default: all but demo; the demo
# pins device: cpu in its own pipeline, so it says nothing about the GPU), REPEATS (3), E2E_REPEATS (1),
# WORKERS (4), OUT (bench-gpu.json), MEDTL_DATA_ROOT (the real data root). Extra arguments go to run.py.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: torch sees no CUDA GPU (install a CUDA build of torch; see README)" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

args=(--device cuda --amp bf16 --channels-last --pin-memory
      --workers "${WORKERS:-4}" --repeats "${REPEATS:-3}" --e2e-repeats "${E2E_REPEATS:-1}"
      --sections "${SECTIONS:-trainer,loading,inference,models,options,e2e}"
      --out "${OUT:-bench-gpu.json}" --keep-going)
if [ "${COMPILE:-0}" = "1" ]; then
  args+=(--compile)
fi

start=$(date +%s)
status=0
"$PY" benchmarks/run.py "${args[@]}" "$@" || status=$?
echo "gpu.sh: finished in $(( $(date +%s) - start )) s"
exit $status
