"""Thread pools sized to the CPUs this process may use, polite on a shared machine; memory kept for reuse.

``keep_freed_memory`` (below) stops glibc from handing every freed activation tensor back to the system.

Two defaults of the CPU stack make a busy machine collapse rather than slow down: OpenMP worker threads
spin for a long time while waiting for work (GNU libgomp spins 300,000 rounds before it sleeps), so with
more runnable threads than cores each parallel region waits for spinning threads that hold the cores;
and the pool is sized from the machine's cores, not from the process's CPU affinity or its cgroup quota
(a container limited to 2 CPUs on a 64-core host would start 64 threads). Measured on the 2-core
development machine under load 14: a resnet10 forward pass took 2.6 s with the defaults and 0.64 s when
the threads did not spin.

Not spinning at all (``OMP_WAIT_POLICY=PASSIVE``) costs speed on a quiet machine: every parallel region
then wakes its threads from sleep. A short spin, ``GOMP_SPINCOUNT=2000`` (some tens of microseconds),
keeps both. Three interleaved rounds on the 2 cores (medians; docs/performance.md): a bf16 ResNet-18
training step took 195 ms with it, 214 ms passive and 191 ms with libgomp's default spin; ``medtl demo``
took 33 s quiet and 74 s beside two CPU-bound processes with it, 39 s and 83 s passive.

``configure_threads`` runs when medtl is imported. It only fills in what the user has not set
(``OMP_NUM_THREADS``; the wait: any of ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME`` set by
the user leaves all three to the user), so each can be overridden from the environment. The wait
settings take effect only if torch is first imported after medtl (OpenMP reads them at start-up).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path


SPIN_COUNT = 2000  # rounds an idle OpenMP thread spins before it sleeps (libgomp's default: 300,000)


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started several (``RANK``, ``WORLD_SIZE`` > 1), else None: for code
    below the engine that must act once per run (messages, listings, locks). medtl.engine.distributed
    validates the variables when the process group starts."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    except (KeyError, ValueError):
        return None


def cgroup_cpu_limit(cpu_max: str | None) -> int | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("max 100000" or "<quota> <period>"), rounded up."""
    if not cpu_max:
        return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    try:
        limit = cgroup_cpu_limit(Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:
        limit = None
    return max(1, min(n, limit or n))


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (glibc's malloc.h)
MALLOC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_",
                   "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory torch frees for the next step instead of handing it back.

    By default glibc serves large blocks (an activation tensor) with ``mmap`` and returns them with
    ``munmap`` when freed, and trims the heap's free top: every training step then faults its
    activations in again, page by page, zero-filled (about 5,000 page faults per bf16 ResNet-18 step at
    batch 32; 200 with this setting, 3-4% faster). Here every block comes from the heap and the heap is
    never trimmed: a process keeps the memory it once used until it exits (its peak was 1-3% higher in
    the measurement). Only on Linux with glibc, and only if the user has set none of glibc's malloc
    variables, preloads no other allocator (jemalloc, tcmalloc) and has not set
    ``MEDTL_KEEP_FREED_MEMORY=0``. Returns whether it applied.
    """
    if (not sys.platform.startswith("linux") or os.environ.get("MEDTL_KEEP_FREED_MEMORY") == "0"
            or any(k in os.environ for k in MALLOC_SETTINGS) or "alloc" in os.environ.get("LD_PRELOAD", "")):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS: not glibc's malloc
            return False
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def configure_threads() -> int:
    """Size and calm the thread pools (see the module docstring); returns the thread count chosen."""
    n = usable_cpus()
    if not any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        # Intel's OpenMP (conda builds of torch) reads its own setting: by default it spins 200 ms; 0
        # (sleep at once) is its passive wait, unmeasured here
        os.environ["KMP_BLOCKTIME"] = "0"
    if n < (os.cpu_count() or n):
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS") or n)
    except ValueError:  # e.g. a nested-parallelism list "4,2": leave it to OpenMP
        return n
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > threads:  # imported before medtl: resize its pool
        torch.set_num_threads(threads)
    return threads
