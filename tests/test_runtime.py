"""Thread pools follow the CPUs a process may use and spin only briefly while waiting (medtl.runtime)."""

import os
import subprocess
import sys

import pytest

from medtl.runtime import cgroup_cpu_limit, usable_cpus

PROBE = ("import medtl, os, torch; print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY', '-'), "
         "os.environ.get('GOMP_SPINCOUNT', '-'), os.environ.get('KMP_BLOCKTIME', '-'))")
WAITS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@pytest.mark.parametrize("line, expected", [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2),
                                            ("50000 100000", 1), ("", None), ("garbage", None)])
def test_cgroup_quota_is_read_as_whole_cpus(line, expected):
    assert cgroup_cpu_limit(line) == expected


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in WAITS}
    return {**env, **extra}


def test_an_affinity_of_one_cpu_gives_one_thread_and_a_short_spin():
    cpu = sorted(os.sched_getaffinity(0))[0]
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}}); {PROBE}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True).stdout
    assert out.split() == ["1", "-", "2000", "0"]


def test_the_users_settings_win():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env=_env(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")).stdout
    assert out.split() == ["1", "ACTIVE", "-", "-"]  # a wait of the user's: nothing of medtl's beside it
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env=_env(GOMP_SPINCOUNT="100")).stdout
    assert out.split()[1:] == ["-", "100", "-"]


def test_torch_imported_first_is_resized_to_the_usable_cpus():
    code = ("import os, torch; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "torch.set_num_threads(4); import medtl; print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True).stdout
    assert out.split() == ["1"]
    assert usable_cpus() >= 1
