"""``medtl results``: docs/results.md from pipeline run folders (their report.json and run records).

Nothing here computes a metric: every number is read from a run folder's ``report.json`` (the
evaluation module's output), ``stages.json`` (wall time per stage), ``environment.json`` (hardware and
versions) and ``config.yaml``. The verdicts follow one stated rule: a strategy "helped" over the
baseline when the 95% intervals of their seed-mean AUROC do not overlap and its mean is higher; it
"did worse" when they do not overlap and its mean is lower; otherwise the difference is inconclusive.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from medtl.data.manifest import Manifest
from medtl.errors import MedtlError
from medtl.pipeline.runner import strategy_entries

BASELINE_NAMES = ("scratch", "scratch_3d", "source_only")


def _fmt(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("value") is None:
        return "undefined" + (f" ({m['reason']})" if m and m.get("reason") else "")
    text = f"{m['value']:.{digits}f}"
    if m.get("ci_low") is not None and m.get("ci_high") is not None:
        text += f" ({m['ci_low']:.{digits}f}–{m['ci_high']:.{digits}f})"
    return text


def _baseline(names: list[str]) -> str | None:
    for b in BASELINE_NAMES:
        if b in names:
            return b
    return None


def _verdict(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("value") is None or b.get("value") is None:
        return "undefined"
    if None in (a.get("ci_low"), a.get("ci_high"), b.get("ci_low"), b.get("ci_high")):
        return "no interval"
    if a["ci_low"] > b["ci_high"]:
        return "helped"
    if a["ci_high"] < b["ci_low"]:
        return "did worse"
    return "inconclusive (intervals overlap)"


def pipeline_section(run: Path) -> str:
    report_path = run / "report.json"
    if not report_path.exists():
        raise MedtlError("no report.json: has the pipeline finished?", run)
    report = json.loads(report_path.read_text())
    stages = json.loads((run / "stages.json").read_text())
    env = json.loads((run / "environment.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    seconds = sum(float(s.get("seconds") or 0) for s in stages.values())
    per_stage = ", ".join(f"{k} {float(v.get('seconds') or 0):.0f} s" for k, v in stages.items())
    lines = [f"## {config['name']}", "", config.get("description", ""), ""]
    lines += [
        f"- Command: `medtl run pipelines/{config['name']}.yaml --data-root ../shared/data --out runs/{config['name']}"
        f" --profile {env.get('profile', 'default')}`",
        f"- Profile `{env.get('profile')}`; seeds {config['seeds']}; label fractions {config['label_fractions']}; "
        f"encoder {config['encoder']['arch']} (stem stride {config['encoder']['stem_stride']}); "
        f"{config['train']['epochs']} epochs at most (patience {config['train']['patience']}).",
        f"- Hardware: {env.get('processor')}, {env.get('cpu_threads')} torch threads, GPU: {env.get('cuda') or 'none'}; "
        f"torch {env.get('torch')}, MONAI {env.get('monai')}, medtl {env.get('medtl')}.",
        f"- Wall time: {seconds / 60:.1f} min over all stages ({per_stage}).",
        f"- Confidence intervals: {report['settings']['ci_method']}. Across seeds: mean and a 95% t-interval of "
        "the mean. Thresholds: " + report["settings"]["threshold_rule"] + " on the validation split, applied to test.",
    ]
    lines += _data_notes(run, config, env.get("manifests", {}))
    lines.append("")
    for task_name, task in report["tasks"].items():
        lines += _task_section(task_name, task)
    for note in report.get("notes", []):
        lines.append(f"> {note}")
        lines.append("")
    return "\n".join(lines)


def _data_notes(run: Path, config: dict, resolved: dict) -> list[str]:
    notes = []
    for key in ("source", "target"):
        path = Path(config[key]["manifest"])  # as written in the pipeline YAML: relative to pipelines/
        # the path the run resolved (recorded since environment.json gained it), else the shipped layout
        candidates = [Path(resolved[key])] if key in resolved else []
        candidates += [path, Path(__file__).resolve().parents[2] / "pipelines" / path]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            continue
        manifest = Manifest.load(found)
        meta = manifest.meta
        text = f"- {key.title()} `{found.name}`: near-copy groups kept inside one split: {meta.get('near_copy_groups')}"
        text += f" ({meta.get('near_copy_images')} images)"
        test = (meta.get("near_copy_groups_by_split") or {}).get("test")
        if test:
            text += f", of which {test['groups']} groups ({test['images']} images) sit wholly in the test split"
        if meta.get("excluded_rows"):
            text += f"; {meta['excluded_rows']} images that copy `{meta.get('excluded_near_copies_of')}` dropped"
        if config[key].get("max_per_split"):
            text += f"; at most {config[key]['max_per_split']} images per split in this profile"
        if key == "target":
            text += _evaluated_test_copies(run, manifest)
        notes.append(text + ".")
    return notes


def _evaluated_test_copies(run: Path, manifest: Manifest) -> str:
    """How many of the target test images this run scored belong to a near-copy group (from predictions.csv)."""
    if "near_copy_group" not in manifest.extra_columns or not (run / "predictions.csv").exists():
        return ""
    group_of = {r.path: r.extras.get("near_copy_group", "") for r in manifest}
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        scored = {row["case_id"] for row in csv.DictReader(f) if row.get("split") == "test"}
    in_groups = [group_of[c] for c in scored if group_of.get(c)]
    return (f"; of the {len(scored)} target test images this run scored, {len(in_groups)} belong to "
            f"{len(set(in_groups))} near-copy groups, each wholly inside the test split")


def _task_section(name: str, task: dict) -> list[str]:
    lines = [f"### Task `{name}` ({task['kind']}" + (f"; positive class {task.get('positive_class')})" if
                                                    task.get("positive_class") else ")"), ""]
    strategies = task["strategies"]
    if task["kind"] == "regression":
        lines += ["| strategy | runs | MAE (years) | RMSE | R² | Pearson r |", "|---|---|---|---|---|---|"]
        for s_name, s in strategies.items():
            m = s["metrics"]
            lines.append(f"| {s_name} | {s.get('n_runs')} | {_fmt(m.get('mae'), 2)} | {_fmt(m.get('rmse'), 2)} | "
                         f"{_fmt(m.get('r2'))} | {_fmt(m.get('pearson_r'))} |")
        return lines + [""]
    multiclass = task["kind"] == "multiclass"
    head = "| strategy | label fraction | runs | n test | AUROC" + (" (macro)" if multiclass else "")
    head += " | balanced accuracy |" + ("" if multiclass else " sensitivity | specificity |")
    lines += [head, "|" + "---|" * (6 if multiclass else 8)]
    for s_name, s in strategies.items():
        for e in strategy_entries(s):
            m = e["metrics"]
            row = (f"| {s_name} | {e.get('label_fraction')} | {e.get('n_runs')} | {e.get('n_test', s.get('n_test'))} | "
                   f"{_fmt(m.get('auroc'))} | {_fmt(m.get('balanced_accuracy'))} |")
            if not multiclass:
                row += f" {_fmt(m.get('sensitivity'))} | {_fmt(m.get('specificity'))} |"
            lines.append(row)
    lines.append("")
    base = _baseline(list(strategies))
    if base:
        lines += [f"Compared with the baseline `{base}` (seed-mean AUROC, 95% intervals; DeLong per seed on the same "
                  "test cases):", ""]
        base_by_frac = {e.get("label_fraction"): e for e in strategy_entries(strategies[base])}
        for s_name, s in strategies.items():
            if s_name == base:
                continue
            for e in strategy_entries(s):
                b = base_by_frac.get(e.get("label_fraction"))
                if b is None:
                    continue
                a_m, b_m = e["metrics"].get("auroc"), b["metrics"].get("auroc")
                diff = (a_m["value"] - b_m["value"]) if a_m and b_m and None not in (a_m["value"], b_m["value"]) else None
                pvals = [c["p_value"] for c in task.get("comparisons", [])
                         if {c["strategy_a"], c["strategy_b"]} == {s_name, base}
                         and c.get("label_fraction") == e.get("label_fraction") and c.get("p_value") is not None]
                delong = (f"; DeLong p < 0.05 in {sum(p < 0.05 for p in pvals)} of {len(pvals)} seeds" if pvals else "")
                lines.append(f"- `{s_name}` at fraction {e.get('label_fraction')}: "
                             f"{_verdict(a_m, b_m)}" + (f", AUROC {diff:+.3f}" if diff is not None else "") + delong)
        lines.append("")
    return lines


def write_results(runs: list[str | Path], out: str | Path) -> Path:
    sections = [pipeline_section(Path(r)) for r in runs]
    header = [
        "# Results",
        "",
        "Generated by `medtl results " + " ".join(str(r) for r in runs) + f" --out {out}` from each run folder's "
        "report.json; every number in the generated sections comes from those files (hand-written notes, where added, say so and only quote them). Verdict rule: a strategy *helped* over the baseline "
        "when the 95% intervals of the seed-mean AUROC do not overlap and its mean is higher, *did worse* when they "
        "do not overlap and its mean is lower, and is *inconclusive* otherwise. These are CPU-profile runs (small "
        "images, few epochs, capped data) unless a section says otherwise: they show what the pipeline measures and "
        "how, not the best each strategy can reach.",
        "",
    ]
    shown = {yaml.safe_load((Path(r) / "config.yaml").read_text())["name"] for r in runs}
    pipelines_dir = Path(__file__).resolve().parents[2] / "pipelines"
    missing = sorted(p.stem for p in pipelines_dir.glob("*.yaml") if p.stem not in shown)
    if missing:
        header += ["Pipelines with no finished run on this page yet (run them, then regenerate this page):", ""]
        header += [f"- `{m}`: `medtl run pipelines/{m}.yaml --data-root ../shared/data --out runs/{m} --profile cpu`"
                   for m in missing]
        header.append("")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + sections) + "\n")
    return out
