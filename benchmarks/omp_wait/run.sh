#!/bin/bash
# OpenMP wait settings side by side (issue #17): what medtl.runtime should set.
#   bash benchmarks/omp_wait/run.sh [ROUNDS] > omp_wait.txt   # about 7 min per round on 2 cores; quiet machine
# Per round, interleaved: a bf16 ResNet-18 training step (step.py, median of 20 steps) under each setting,
# then `medtl demo` quiet and beside two CPU-bound processes under each setting. The raw lines, then a
# table of medians over rounds (summary.py). Settings: PASSIVE (OMP_WAIT_POLICY=PASSIVE), a number N
# (GOMP_SPINCOUNT=N), default (libgomp's own: spin 300,000 rounds). An empty OMP_WAIT_POLICY keeps
# medtl.runtime from filling in its own choice (libgomp warns about it on stderr, which is dropped).
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
HERE=benchmarks/omp_wait
pol_env() { case $1 in PASSIVE) echo "OMP_WAIT_POLICY=PASSIVE";; default) echo "OMP_WAIT_POLICY=";; *) echo "OMP_WAIT_POLICY= GOMP_SPINCOUNT=$1";; esac; }
demo() {
  local d s e log
  d=$(mktemp -d); log=$(mktemp); s=$(date +%s.%N)
  env $(pol_env $1) python -m medtl demo --out $d >$log 2>&1 || { echo "FAIL"; tail -20 $log >&2; }
  e=$(date +%s.%N); rm -rf $d $log
  python -c "print(round($e - $s, 1))"
}
busy() { python -c "import time
end = time.time() + 3600
while time.time() < end: pass" & }
{
for r in $(seq 1 $ROUNDS); do
  for p in PASSIVE 500 2000 10000 default; do echo "step r$r $p $(env $(pol_env $p) python $HERE/step.py 2>/dev/null)"; done
  for p in PASSIVE 2000 10000; do
    echo "demo_quiet r$r $p $(demo $p)"
    busy; b1=$!; busy; b2=$!
    echo "demo_busy r$r $p $(demo $p)"
    kill $b1 $b2; wait $b1 $b2 2>/dev/null
  done
done
} | tee /dev/stderr | python $HERE/summary.py
