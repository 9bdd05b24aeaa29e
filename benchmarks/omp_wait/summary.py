"""Medians over rounds of benchmarks/omp_wait/run.sh's raw lines (stdin): one table row per setting."""
import sys
from collections import defaultdict
from statistics import median

values = defaultdict(list)
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 3:
        kind, _, setting = parts[:3]
        values[(kind, setting)].append(parts[3] if len(parts) > 3 else "FAIL")

settings = list(dict.fromkeys(s for _, s in values))


def cell(kind, setting, unit):
    got = values.get((kind, setting))
    if not got:
        return "-"
    ok = [float(v) for v in got if v != "FAIL"]
    fails = len(got) - len(ok)
    raw = ", ".join(v if v == "FAIL" else f"{float(v):.0f}" for v in got)
    text = f"{median(ok):.0f} {unit} ({raw})" if ok else "all failed"
    return text + (f", {fails} failed" if fails else "")


print("| setting | bf16 ResNet-18 step | demo quiet | demo beside 2 busy processes | busy / quiet |")
print("|---|---|---|---|---|")
for s in settings:
    q = [float(v) for v in values.get(("demo_quiet", s), []) if v != "FAIL"]
    b = [float(v) for v in values.get(("demo_busy", s), []) if v != "FAIL"]
    ratio = f"{median(b) / median(q):.1f}x" if q and b else "-"
    print(f"| {s} | {cell('step', s, 'ms')} | {cell('demo_quiet', s, 's')} | {cell('demo_busy', s, 's')} | {ratio} |")
