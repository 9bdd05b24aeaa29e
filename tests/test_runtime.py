"""Thread pools follow the CPUs a process may use and spin only briefly while waiting (medtl.runtime)."""

import os
import subprocess
import sys
from pathlib import Path

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


MALLOC_PROBE = ("import medtl, os, torch\n"
                "from medtl.runtime import keep_freed_memory\n"
                "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
                "x = torch.randn(64, 64, 64, 64)\n"  # 64 MiB: above glibc's largest mmap threshold
                "y = x * 2\n"
                "before = rss()\n"
                "del y\n"
                "print(keep_freed_memory(), before - rss())")


def test_freed_memory_is_kept_for_reuse_unless_the_user_set_malloc():
    """glibc hands a freed 64 MiB tensor back to the system (the next one is faulted in again, page by
    page); with medtl's setting the process keeps it for the next. A malloc variable of the user's, or
    MEDTL_KEEP_FREED_MEMORY=0, leaves glibc's default."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "MEDTL_KEEP_FREED_MEMORY")}

    def probe(**extra):
        out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, check=True,
                             env={**env, **extra}).stdout.split()
        return out[0] == "True", int(out[1])  # applied, MiB returned to the system by the free

    applied, returned = probe()
    assert applied and returned < 8
    for users in ({"MALLOC_ARENA_MAX": "4"}, {"MEDTL_KEEP_FREED_MEMORY": "0"}):
        applied, returned = probe(**users)
        assert not applied and returned >= 60


def test_the_command_exits_with_its_status_and_all_its_output():
    """``python -m medtl`` leaves without interpreter teardown (os._exit): what it printed into a pipe
    still comes through whole, with its exit status; so does an error's."""
    from medtl.cli import build_parser

    bare = subprocess.run([sys.executable, "-m", "medtl"], capture_output=True, text=True)  # help, status 2
    assert bare.returncode == 2 and bare.stdout == build_parser().format_help()
    script = Path(sys.executable).with_name("medtl")  # the installed console script runs the same entry
    assert script.exists(), "medtl is not installed as a command (pip install -e .)"
    installed = subprocess.run([str(script)], capture_output=True, text=True)
    assert installed.returncode == 2 and installed.stdout == bare.stdout
    bad = subprocess.run([sys.executable, "-m", "medtl", "train", "--train", "/nonexistent/x.csv", "--out", "/tmp/x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr and "/nonexistent/x.csv" in bad.stderr
