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

import numpy as np
import yaml

from medtl.data.manifest import Manifest
from medtl.errors import MedtlError
from medtl.evaluation.evaluate import SAME_IN_EVERY_RUN
from medtl.evaluation.report.document import figure_name
from medtl.evaluation.report.schema import Metric, Task, read_report
from medtl.pipeline.jobs import TRAINING_MEAN

BASELINE_NAMES = ("scratch", "scratch_3d", "source_only")


def _fmt(m: Metric | None, digits: int = 3) -> str:
    """``0.853 (0.801–0.897)``, with the report's mark when the interval is not the row's usual one (S: every
    seed scored the same, a run's interval; W / N: a score interval at 0 or 1; D: no width)."""
    from medtl.evaluation.report.sections import interval_mark

    if not m:
        return "not run"
    if m.value is None:
        return "undefined" + (f" ({m.reason})" if m.reason else "")
    text = f"{m.value:.{digits}f}"
    if m.ci_low is not None and m.ci_high is not None:
        mark = interval_mark({"ci_low": m.ci_low, "ci_high": m.ci_high, "ci_method": m.ci_method})
        text += f" ({m.ci_low:.{digits}f}–{m.ci_high:.{digits}f}{' ' + mark if mark else ''})"
    return text


def _baseline(names: list[str]) -> str | None:
    for b in BASELINE_NAMES:
        if b in names:
            return b
    return None


def verdict(a: Metric | None, b: Metric | None) -> str:
    """Strategy ``a`` against baseline ``b`` by the page's rule (higher is better; intervals must not overlap)."""
    if not a or not b or a.value is None or b.value is None:
        return "undefined"
    if None in (a.ci_low, a.ci_high, b.ci_low, b.ci_high):
        return "no interval"
    if a.ci_low > b.ci_high:
        word = "helped"
    elif a.ci_high < b.ci_low:
        word = "did worse"
    else:
        word = "inconclusive (intervals overlap)"
    return word + _mixed_intervals(a, b)


def _over_test_cases(m: Metric) -> bool:
    """Whether ``m``'s interval is a run's over the test cases (one run, or seeds that all scored the same), not a
    t-interval over seeds."""
    return (m.n_runs or 1) < 2 or (m.ci_method or "").startswith(SAME_IN_EVERY_RUN)


def _mixed_intervals(a: Metric, b: Metric) -> str:
    if _over_test_cases(a) != _over_test_cases(b):  # they measure different things
        return " [S: one interval is over the test cases, the other over seeds]"
    return ""


def pipeline_section(run: Path, figures_dir: Path | None = None) -> str:
    report_path = run / "report.json"
    if not report_path.exists():
        raise MedtlError("no report.json: has the pipeline finished?", run)
    stages = json.loads((run / "stages.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    # a stage the config no longer runs (similarity switched off after an interrupted one) stays unfinished forever
    unused = set() if (config.get("similarity") or {}).get("enabled", True) else {"similarity"}
    unfinished = [name for name, entry in stages.items()
                  if name not in unused and entry.get("status", "done") != "done"]
    if unfinished:  # a grown or interrupted run keeps the report of its earlier config: it would pass as complete
        raise MedtlError(f"the run has not finished: stage(s) {', '.join(unfinished)} still to run (its report.json "
                         "may lack their results); run the same `medtl run` command again to finish it", run)
    report = read_report(report_path)
    env = json.loads((run / "environment.json").read_text())
    seconds = sum(float(s.get("seconds") or 0) for s in stages.values())
    per_stage = ", ".join(f"{k} {float(v.get('seconds') or 0):.0f} s" for k, v in stages.items())
    lines = [f"## {config['name']}", "", config.get("description", ""), ""]
    lines += [
        f"- Command: `{_command(config, env)}`",
        f"- Profile `{env.get('profile')}`; seeds {config['seeds']}; "
        + (f"labelled training rows {config['label_counts']}; " if config.get("label_counts")
           else f"label fractions {config['label_fractions']}; ")
        + f"encoder {config['encoder']['arch']} (stem stride {config['encoder']['stem_stride']}); "
        f"{config['train']['epochs']} epochs at most (patience {config['train']['patience']}).",
        f"- Hardware: {env.get('processor')}, {env.get('cpu_threads')} torch threads, GPU: {env.get('cuda') or 'none'}; "
        f"torch {env.get('torch')}, MONAI {env.get('monai')}, medtl {env.get('medtl')}.",
        f"- Wall time: {seconds / 60:.1f} min over all stages ({per_stage}).",
        f"- Confidence intervals: {report.settings.ci_method}. Across seeds: mean and a 95% t-interval of "
        "the mean. Thresholds: " + report.settings.threshold_rule + " on the validation split, applied to test.",
    ]
    lines += _data_notes(run, config, env.get("manifests", {}))
    lines.append("")
    for task_name, task in report.tasks.items():
        lines += _task_section(task_name, task, config.get("label_counts"))
        if figures_dir is not None:
            lines += _task_figure(config["name"], task_name, task, figures_dir, config.get("label_counts"))
        lines += learning_curve_section(config["name"], task_name, task, figures_dir, config.get("label_counts"))
    lines += selection_section(run, config)
    for note in report.notes:
        lines.append(f"> {note}")
        lines.append("")
    return "\n".join(lines)


def _command(config: dict, env: dict) -> str:
    """The run's command as given (recorded since 2026-12-01), else the shipped layout's."""
    import os

    def shown(path: str) -> str:  # relative to the current folder where that is shorter
        rel = os.path.relpath(path)
        return rel if len(rel) < len(path) else path

    profile = env.get("profile") or "default"
    flag = "" if profile == "default" else f" --profile {profile}"  # the default profile has no flag
    if env.get("config_path") and env.get("out"):
        return (f"medtl run {shown(env['config_path'])} --data-root {shown(env['data_root'])} --out "
                f"{shown(env['out'])}{flag}")
    return f"medtl run pipelines/{config['name']}.yaml --data-root ../shared/data --out runs/{config['name']}{flag}"


def selection_section(run: Path, config: dict) -> list[str]:
    """For unsupervised adaptation: what each checkpoint selector would have chosen in every run, and its
    regret (target test AUROC lost against choosing the epoch with target validation labels)."""
    import numpy as np

    from medtl.engine.run_folder import RunFolder
    from medtl.engine.selection import selector_regret

    per_selector: dict[str, list[float]] = {}
    chosen_auroc: dict[str, list[float]] = {}
    for log in RunFolder.logs_under(run / "transfer"):
        history = RunFolder.read_log_file(log)
        for name, r in selector_regret(history).items():
            per_selector.setdefault(name, []).append(r["regret"])
            chosen_auroc.setdefault(name, []).append(r["test_auroc"])
    if not per_selector:
        return []
    n_runs = len(per_selector.get("target_labels", []))
    used = (config.get("train") or {}).get("selector", "source_loss")
    lines = [f"### Checkpoint selection without target labels ({n_runs} runs)", "",
             f"Each run logged every selector's score at every epoch; the run's checkpoint was chosen by `{used}`. "
             "Regret: target test AUROC lost against choosing the epoch with the best *labelled target validation* "
             "AUROC (which a UDA user does not have); mean over runs with a 95% t-interval. Lower is better.", "",
             "| selector | runs | test AUROC of the chosen epoch | regret |", "|---|---|---|---|"]
    for name, regrets in sorted(per_selector.items(), key=lambda kv: np.mean(kv[1])):
        lines.append(f"| {name}{' (used)' if name == used else ''} | {len(regrets)} | "
                     f"{_mean_ci(chosen_auroc[name], (0.0, 1.0))} | {_mean_ci(regrets, (-1.0, 1.0))} |")
    return lines + [""]


KEPT_MARK = "*This section is kept unchanged from the previous version of this page (its run folder was not " \
            "given to `medtl results`); its numbers come from that earlier run and code.*"


def _previous_sections(out: Path, regenerated: set[str], keep: tuple[str, ...]) -> dict[str, str]:
    """``## <pipeline>`` sections of the existing page to keep (see :func:`write_results`)."""
    if not keep or not out.exists():
        return {}
    import re

    text = out.read_text()
    parts = re.split(r"(?m)^(?=## )", text)
    found = {}
    for part in parts:
        m = re.match(r"## (\S+)\s*$", part.splitlines()[0]) if part.startswith("## ") else None
        if not m or m.group(1) in regenerated or (keep != ("all",) and m.group(1) not in keep):
            continue
        if not (Path(__file__).resolve().parents[2] / "pipelines" / f"{m.group(1)}.yaml").exists():
            continue  # the summary or the recommendation table: regenerated, not kept
        body = part.rstrip("\n").split("\n", 1)
        rest = body[1] if len(body) > 1 else ""
        if KEPT_MARK not in rest:
            rest = "\n" + KEPT_MARK + "\n" + rest
        found[m.group(1)] = body[0] + "\n" + rest + "\n"
    return found


def recommendation_section(runs: list[Path]) -> list[str]:
    """The strategy recommendation of each run (made before training) beside what the run observed, per label
    budget: rank correlation, whether the top pick was best, and its regret; a tie is reported as a tie."""
    rows = []
    for run in runs:
        report = read_report(run / "report.json")
        rec = report.recommendation
        if not rec or not (rec.by_budget or rec.outcome):
            continue
        name = yaml.safe_load((run / "config.yaml").read_text())["name"]
        if not rec.by_budget:  # a report from before the ranking was made per budget: its largest budget only
            rec_path = run / "similarity" / "recommendation.json"
            tie = (json.loads(rec_path.read_text()).get("tie") or []) if rec_path.exists() else []
            rows.append((name, "largest", rec.outcome.model_copy(update={"tie": tie})))
        for o in rec.by_budget:
            budget = f"{o.n_labelled} ({o.label_fraction:.3g})" if o.n_labelled else "0 (target unlabelled)"
            rows.append((name, budget, o))
    if not rows:
        return []

    def num(v):
        return "undefined" if v is None else f"{v:.3f}"

    lines = ["## The recommendation against the outcomes", "",
             "Each pipeline measures, before training and from the images alone, how the encoders its candidate "
             "strategies start from see the source and the target (the similarity stage). The ranking below is made "
             "from those measurements by the recommendation rule of the code that wrote this page (the stage's own "
             "record, `similarity/recommendation.json`, keeps the ranking the run's code made then), and a pick that "
             "does not stay on top on three in four random halves of the images, while another candidate tops a tenth of "
             "them, is reported as a tie (unstable); "
             "a candidate "
             "that no measurement applies to (training from scratch uses nothing of the source; a 3D encoder cannot "
             "read 2D source images) sits at the middle rank of each measure, so its strategy prior places it. The "
             "ranking is made for each label budget, since a strategy's prior depends on how many labelled cases a "
             "job has, and set beside what the runs observed at that budget (test metric of the first task, mean over seeds: AUROC, "
             "or MAE for regression). Spearman and Kendall: rank correlation between the candidates' composite "
             "scores and their observed values, equal scores sharing a rank (undefined with fewer than 3 candidates, "
             "equal outcomes, or one score for all); top pick best: *tie* where the ranking could not separate its "
             "top candidates (reported first, even if the outcomes were equal too), *all equal* where every candidate "
             "observed the same value (neither counts as a hit); "
             "regret: best observed minus the pick's value (with a tie, the pick is the top-scored of the tied "
             "candidates, by name where the scores are equal).", "",
             "| pipeline | labelled cases (fraction) | recommended | best observed | top pick best | Spearman | Kendall | regret |",
             "|---|---|---|---|---|---|---|---|"]
    for name, budget, o in rows:
        pick = f"tie: {', '.join(o.tie)}" if o.tie else o.recommended
        if o.prior_only:  # nothing measured told them apart: a rule of thumb is no pick
            pick = ("no pick: no measurement separates the candidates"
                    + (f" ({', '.join(o.tie)})" if o.tie else f"; the prior alone would put {o.recommended} first"))
        elif o.support is not None:  # how often the top-scored candidate stayed on top over the image resamples
            pick += f" (top on {o.support:.0%} of image halves)"
        best = f"tie: {', '.join(o.best_observed_tie)}" if o.best_observed_tie else o.best_observed
        lines.append(f"| {name} | {budget} | {pick} | {best} | {_hit(o)} | "
                     f"{num(o.spearman)} | {num(o.kendall)} | {num(o.regret)} |")
    rhos = [o.spearman for _, _, o in rows if o.spearman is not None]
    hits = sum(_hit(o) == "yes" for _, _, o in rows)
    lines += ["", f"Over all {len(rows)} rows: the top pick was the best observed in {hits}; "
              f"{sum(bool(o.tie) for _, _, o in rows)} were ties of the ranking, "
              f"{sum(_hit(o) == 'all equal' for _, _, o in rows)} had every outcome equal; median Spearman "
              f"{num(float(np.median(rhos)) if rhos else None)} over the {len(rhos)} rows where it is defined."]
    return lines + [""]


def _hit(o) -> str:
    """Was the recommendation the best observed: yes, no, tie (the ranking picked none) or all equal."""
    if o.tie:
        return "tie"
    if o.top1_is_best is None:
        return "all equal" if o.best_observed_tie else "undefined"
    return "yes" if o.top1_is_best else "no"


def _mean_ci(values: list[float], bounds: tuple[float, float]) -> str:
    from medtl.evaluation.bootstrap import seed_summary

    m = seed_summary(values, bounds=bounds)
    if m["ci_low"] is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})"


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
    """How many of the target test images this run scored belong to a near-copy group (from predictions.csv),
    per task when the run has several (each task may draw its own capped test set)."""
    if "near_copy_group" not in manifest.extra_columns or not (run / "predictions.csv").exists():
        return ""
    group_of = {r.path: r.extras.get("near_copy_group", "") for r in manifest}
    scored: dict[str, set[str]] = {}
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("split") == "test":
                scored.setdefault(row.get("task", ""), set()).add(row["case_id"])
    parts = []
    for task, cases in scored.items():
        in_groups = [group_of[c] for c in cases if group_of.get(c)]
        parts.append((f"task `{task}`: " if len(scored) > 1 else "") + f"of the {len(cases)} target test images "
                     f"scored, {len(in_groups)} belong to {len(set(in_groups))} near-copy groups")
    return "; " + "; ".join(parts) + " (each group wholly inside the test split)" if parts else ""


def _task_figure(pipeline: str, name: str, task: Task, figures_dir: Path,
                 label_counts: list[int] | None = None) -> list[str]:
    """A forest plot of the seed-mean headline metric per strategy and label budget, beside the table."""
    from medtl.evaluation.figures import strategy_interval_figure

    metric = "mae" if task.kind == "regression" else "auroc"
    _, counts = _budgets(task, label_counts)  # a study by label count names its budgets by the count
    rows = []
    for s_name, s in task.strategies.items():
        for e in s.entries():
            m = e.metrics.get(metric) or Metric()
            rows.append({"strategy": s_name, "label_fraction": e.label_fraction, "value": m.value,
                         "ci_low": m.ci_low, "ci_high": m.ci_high, "budget": counts.get(e.label_fraction)})
    if not any(r["value"] is not None for r in rows):
        return []
    label = "MAE (years)" if metric == "mae" else "AUROC" + (" (macro)" if task.kind == "multiclass" else "")
    png = strategy_interval_figure(rows, label, f"{pipeline}: {name}", reference=None if metric == "mae" else 0.5)
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / figure_name(f"{pipeline}_{name}.png")  # the names come from a run's config.yaml
    path.write_bytes(png)
    return [f"![{label} per strategy, {pipeline} / {name}]({figures_dir.name}/{path.name})", "",
            f"*{label}: seed mean and 95% t-interval per strategy and label {'count' if counts else 'fraction'} "
            "(where a budget ran one seed or every seed scored the same, a run's interval over the test cases)"
            + ("; dotted line: chance (0.5)" if metric != "mae" else "") + ".*", ""]


def learning_curve_section(pipeline: str, name: str, task: Task, figures_dir: Path | None,
                           label_counts: list[int] | None = None) -> list[str]:
    """For a task run at two or more label budgets: its headline metric against the budget per strategy
    (a figure) and, per budget, the best strategy against the baseline with the page's verdict rule, the
    margin by which its interval clears (or misses) the baseline's, and DeLong per seed (classification).
    Multiclass tasks are judged by accuracy, binary ones by AUROC, regression by MAE (lower is better)."""
    fractions, budget = _budgets(task, label_counts)
    base = _baseline(list(task.strategies))
    if len(fractions) < 2 or base is None:
        return []
    metric = {"regression": "mae", "binary": "auroc"}.get(task.kind, "accuracy")
    lower = metric == "mae"
    axis = "labelled training rows" if budget else "label fraction"
    by = {s_name: {e.label_fraction: e.metrics.get(metric) for e in s.entries()}
          for s_name, s in task.strategies.items() if s_name != TRAINING_MEAN}
    lines = [f"### Learning curve: `{name}` {metric} by {axis}", ""]
    if figures_dir is not None:
        from medtl.evaluation.figures import label_fraction_figure

        series = []
        for s_name, points in by.items():
            pts = [(f, m) for f, m in sorted(points.items()) if m is not None and m.value is not None]
            if pts:
                series.append({"label": s_name, "x": [budget.get(f, f) for f, _ in pts], "y": [m.value for _, m in pts],
                               "low": [m.ci_low if m.ci_low is not None else m.value for _, m in pts],
                               "high": [m.ci_high if m.ci_high is not None else m.value for _, m in pts]})
        figures_dir.mkdir(parents=True, exist_ok=True)
        path = figures_dir / figure_name(f"{pipeline}_{name}_learning_curve.png")
        path.write_bytes(label_fraction_figure(series, metric, f"{pipeline}: {name}", xlabel=axis, baseline=base))
        lines += [f"![{metric} by {axis}, {pipeline} / {name}]({figures_dir.name}/{path.name})", "",
                  f"*Test {metric}: seed mean (line) and 95% t-interval over seeds (band; where a budget ran one seed "
                  "or every seed scored the same, a run's interval over the test cases, as the table below marks) per "
                  f"strategy; `{base}` in "
                  "black (with more than six strategies only its band is drawn: the table below gives every interval)"
                  + (f"; as fractions of the training rows: {', '.join(f'{c} = {f:.3g}' for f, c in budget.items())}"
                     if budget else "") + ".*", ""]
    # every strategy at every budget (seed mean and 95% t-interval), then the best against the baseline
    heads = [str(budget.get(f, f"{f:g}")) for f in fractions]
    lines += [f"| strategy \\ {axis} | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for s_name, s in task.strategies.items():  # with the training-mean baseline of a regression task
        pts = {e.label_fraction: e.metrics.get(metric) for e in s.entries()}
        lines.append(f"| `{s_name}` | " + " | ".join(_fmt(pts.get(f)) for f in fractions) + " |")
    lines += ["", f"*Test {metric} per strategy and {axis}: seed mean (95% t-interval over seeds; where a budget "
              "ran one seed, or every seed scored the same, a run's interval over the test cases: its bootstrap, or "
              "Wilson's or Newcombe's score interval for a value of 0 or 1, which the bootstrap cannot vary, or "
              "Newcombe's where wider for an AUROC with fewer than 50 cases in a class).*", ""]
    test_name = "paired t-test" if lower else "DeLong"
    lines += [f"| {axis} | `{base}` | best other strategy | its {metric} | verdict | interval margin | "
              f"{test_name} per seed |", "|---|---|---|---|---|---|---|"]
    for f in fractions:
        b = by[base].get(f)
        others = [(s_name, pts.get(f)) for s_name, pts in by.items()
                  if s_name != base and pts.get(f) is not None and pts[f].value is not None]
        if b is None or b.value is None or not others:
            missing = ("no other strategy has a result here" if b is not None and b.value is not None else
                       f"`{base}` has no result here ({'not run' if b is None else 'undefined'}): nothing to judge "
                       "against")
            lines.append(f"| {budget.get(f, f'{f:g}')} | {_fmt(b)} | - | - | {missing} | - | - |")
            continue
        best_name, best = (min if lower else max)(others, key=lambda kv: kv[1].value)
        if lower:
            margin = (b.ci_low - best.ci_high) if None not in (best.ci_high, b.ci_low) else None
            judged = _lower_is_better_verdict(best, b)
        else:
            margin = (best.ci_low - b.ci_high) if None not in (best.ci_low, b.ci_high) else None
            judged = verdict(best, b)
        tied = [n for n, m in others if n != best_name and m.value == best.value]
        shown = f"`{best_name}`" + (f" (tied with {', '.join(f'`{n}`' for n in tied)})" if tied else "")
        row = (f"| {budget.get(f, f'{f:g}')} | {_fmt(b)} | {shown} | {_fmt(best)} | {judged} | "
               + (f"{margin:+.3f}" if margin is not None else "-") + " |")
        row += f" {_seed_test_counts(task, best_name, base, f) or '-'} |"
        lines.append(row)
    lines += ["", (f"*Interval margin: `{base}`'s lower 95% bound minus the best strategy's upper bound"
                   if lower else f"*Interval margin: the best strategy's lower 95% bound minus `{base}`'s upper bound")
              + "; positive means the intervals do not overlap (it beat the baseline), negative is by how much it "
              "missed. " + ("Paired t-test: two-sided test of the two MAEs by the per-case absolute errors"
                            if lower else "DeLong: two-sided test of the two AUROCs (multiclass: macro one-vs-rest)")
              + " on the same test cases in each seed; how many seeds found the best strategy's "
              + ("MAE" if lower else "AUROC") + " higher or lower at p < 0.05, of those tested.*", ""]
    return lines


def _seed_test_counts(task: Task, a: str, base: str, fraction: float | None) -> str | None:
    """``a`` against ``base`` at one label budget, by the paired test per seed (DeLong's for AUROC, the
    paired t-test of absolute errors for MAE): how many seeds found ``a``'s metric higher and how many
    lower at p < 0.05 (a two-sided p alone would count a significant loss as a win); None when no seed
    was tested."""
    tests = [c for c in task.comparisons if {c.strategy_a, c.strategy_b} == {a, base}
             and c.label_fraction == fraction and c.p_value is not None]
    if not tests:
        return None
    # difference is strategy_a - strategy_b: turn it into a - base
    signed = [(c.difference if c.strategy_a == a else -c.difference, c.p_value) for c in tests]
    higher = sum(d > 0 and p < 0.05 for d, p in signed)
    lower = sum(d < 0 and p < 0.05 for d, p in signed)
    what = "MAE " if task.kind == "regression" else ""
    runs_a = {c.run_a if c.strategy_a == a else c.run_b for c in tests}
    runs_base = {c.run_b if c.strategy_a == a else c.run_a for c in tests}
    if len(runs_a) == 1 < len(runs_base):  # one run tested against each seed: not that many replications
        unit = f"tests, the one `{a}` run against each of `{base}`'s {len(runs_base)} runs"
    elif len(runs_base) == 1 < len(runs_a):
        unit = f"tests, each of `{a}`'s {len(runs_a)} runs against the one `{base}` run"
    else:
        unit = "seeds"
    text = f"{what}higher in {higher}, lower in {lower} of {len(tests)} {unit} (p < 0.05"
    if all(c.p_holm is not None for c in tests):  # reports from before Holm was recorded have none
        adjusted = [(c.difference if c.strategy_a == a else -c.difference, c.p_holm) for c in tests]
        n_task = sum(c.p_value is not None for c in task.comparisons)
        text += (f"; after Holm over the task's {n_task} tests: higher in {sum(d > 0 and p < 0.05 for d, p in adjusted)}"
                 f", lower in {sum(d < 0 and p < 0.05 for d, p in adjusted)}")
    return text + ")"


def _against_training_mean(task: Task) -> list[str]:
    """Each regression strategy's MAE against the trivial baseline that predicts the training mean: by the
    intervals, and by the paired t-test of absolute errors per seed."""
    strategies = task.strategies
    base = strategies[TRAINING_MEAN].metrics.get("mae") if TRAINING_MEAN in strategies else None
    if not base or base.value is None:
        return []
    lines = [f"Compared with `{TRAINING_MEAN}` (every case predicted as the mean of the labelled training targets; "
             f"MAE {base.value:.2f}; strategies: seed-mean MAE and its 95% t-interval over seeds; paired t-test of "
             "absolute errors per seed on the same test cases):", ""]
    for s_name, s in strategies.items():
        if s_name == TRAINING_MEAN:
            continue
        m = s.metrics.get("mae")
        if m is None or m.value is None:
            continue
        below = "below" if m.value < base.value else "NOT below"
        tested = _seed_test_counts(task, s_name, TRAINING_MEAN, s.label_fraction)
        lines.append(f"- `{s_name}`: MAE {m.value:.2f} vs {base.value:.2f} ({below} the baseline mean; "
                     f"{_lower_is_better_verdict(m, base)})" + (f"; paired t-test: {tested}" if tested else ""))
    return lines + [""]


def _lower_is_better_verdict(a: Metric, b: Metric) -> str:
    if None in (a.ci_low, a.ci_high, b.ci_low, b.ci_high):
        return "no interval"
    if a.ci_high < b.ci_low:
        word = "better than the baseline (intervals do not overlap)"
    elif a.ci_low > b.ci_high:
        word = "worse than the baseline (intervals do not overlap)"
    else:
        word = "inconclusive (intervals overlap)"
    return word + _mixed_intervals(a, b)


def _budgets(task: Task, label_counts: list[int] | None) -> tuple[list[float], dict[float, int]]:
    """The task's label fractions, ascending, and (under ``label_counts``) the count each stands for: the
    fractions are count / training rows, in the counts' order."""
    fractions = sorted({e.label_fraction for s in task.strategies.values() for e in s.entries()
                        if e.label_fraction is not None})
    counts = dict(zip(fractions, label_counts)) if label_counts and len(label_counts) == len(fractions) else {}
    return fractions, counts


def _task_section(name: str, task: Task, label_counts: list[int] | None = None) -> list[str]:
    lines = [f"### Task `{name}` ({task.kind}" + (f"; positive class {task.positive_class})" if
                                                 task.positive_class else ")"), ""]
    strategies = task.strategies
    fractions, counts = _budgets(task, label_counts)
    names = {f: f"{counts[f]} labelled" if counts else f"fraction {f:g}" for f in fractions}
    if task.kind == "regression":
        largest = max(names, default=None)
        if largest is not None and len(names) > 1:
            lines += [f"At the largest label budget ({names[largest]}; every budget: the learning curve below).", ""]
        lines += ["| strategy | runs | MAE (years) | RMSE | R² | Pearson r |", "|---|---|---|---|---|---|"]
        identical = []
        for s_name, s in strategies.items():
            m = s.metrics
            if ((m.get("mae") and m["mae"].ci_method) or "").startswith(SAME_IN_EVERY_RUN):
                identical.append(s_name)
            lines.append(f"| {s_name} | {s.n_runs} | {_fmt(m.get('mae'), 2)} | {_fmt(m.get('rmse'), 2)} | "
                         f"{_fmt(m.get('r2'))} | {_fmt(m.get('pearson_r'))} |")
        note = [f"{', '.join(f'`{n}`' for n in identical)}: every seed reached the same MAE, so its MAE interval is "
                "the representative run's bootstrap interval over the test cases (sampling of the test cases), not a "
                "t-interval over seeds (zero width); so is any other column marked S.", ""]
        return lines + [""] + (note if identical else []) + _against_training_mean(task)
    multiclass = task.kind == "multiclass"
    head = "| strategy | label budget | runs | n test | AUROC" + (" (macro)" if multiclass else "")
    head += " | balanced accuracy |" + ("" if multiclass else " sensitivity | specificity |")
    lines += [head, "|" + "---|" * (6 if multiclass else 8)]
    for s_name, s in strategies.items():
        for e in s.entries():
            m = e.metrics
            budget = "–" if e.label_fraction is None else names.get(e.label_fraction, f"fraction {e.label_fraction:g}")
            row = (f"| {s_name} | {budget} | {e.n_runs} | {e.n_test} | "
                   f"{_fmt(m.get('auroc'))} | {_fmt(m.get('balanced_accuracy'))} |")
            if not multiclass:
                row += f" {_fmt(m.get('sensitivity'))} | {_fmt(m.get('specificity'))} |"
            lines.append(row)
    lines.append("")
    base = _baseline(list(strategies))
    if base:
        lines += [f"Compared with the baseline `{base}` (seed-mean AUROC, 95% intervals; DeLong per seed on the same "
                  "test cases):", ""]
        base_by_frac = {e.label_fraction: e for e in strategies[base].entries()}
        for s_name, s in strategies.items():
            if s_name == base:
                continue
            for e in s.entries():
                b = base_by_frac.get(e.label_fraction)
                at = names.get(e.label_fraction, f"fraction {e.label_fraction}") if e.label_fraction else "all labels"
                if b is None:
                    lines.append(f"- `{s_name}` at {at}: not compared, `{base}` has no run at this budget")
                    continue
                a_m, b_m = e.metrics.get("auroc"), b.metrics.get("auroc")
                diff = (a_m.value - b_m.value) if a_m and b_m and None not in (a_m.value, b_m.value) else None
                tested = _seed_test_counts(task, s_name, base, e.label_fraction)
                delong = f"; DeLong: {tested}" if tested else ""
                bounded = a_m is not None and b_m is not None and None not in (a_m.ci_low, b_m.ci_low)
                single = ""
                if min(e.n_runs, b.n_runs) == 1 and not bounded:
                    single = " (one run, no interval: the bootstrap is off)"
                elif e.n_runs == b.n_runs == 1:
                    single = " (one run each: bootstrap intervals over the test cases)"
                elif min(e.n_runs, b.n_runs) == 1:
                    one, many = (s_name, b) if e.n_runs == 1 else (base, e)
                    single = (f" (`{one}`: one run, its bootstrap interval over the test cases; the other: a t-interval "
                              f"over {many.n_runs} seeds)")
                lines.append(f"- `{s_name}` at {at}: "
                             f"{verdict(a_m, b_m)}" + (f", AUROC {diff:+.3f}" if diff is not None else "") + single
                             + delong)
        lines.append("")
    return lines


def write_results(runs: list[str | Path], out: str | Path, notes_dir: str | Path | None = None,
                  keep: tuple[str, ...] = ()) -> Path:
    """Write the page; ``notes_dir`` (default: ``results_notes/`` beside ``out``) may hold a hand-written
    ``<pipeline>.md`` per pipeline, placed under its section with a heading that says it is not generated.

    ``keep``: pipelines whose section is copied unchanged from the existing page at ``out`` (their run
    folders are not at hand), each marked as kept from the earlier page; ``("all",)`` keeps every one."""
    notes_dir = Path(notes_dir) if notes_dir is not None else Path(out).parent / "results_notes"
    names = [yaml.safe_load((Path(r) / "config.yaml").read_text())["name"] for r in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # one section, one set of figures and one notes file per pipeline name
        folders = [str(r) for r, n in zip(runs, names) if n == repeated[0]]
        raise MedtlError(f"{len(folders)} run folders of pipeline {repeated[0]!r} ({', '.join(folders)}): their "
                         "sections would share one set of figures and notes; give one folder per pipeline (a "
                         "second study needs its own 'name:' in its YAML)")
    sections = []
    for r, name in zip(runs, names):
        section = pipeline_section(Path(r), Path(out).parent / "results_figures")
        notes = notes_dir / f"{name}.md"
        if notes.exists():
            section += (f"\n### Notes on the {name} run (written by hand, not generated; from "
                        f"`{notes.as_posix()}`)\n\n" + notes.read_text().strip() + "\n")
        sections.append(section)
    header = ["# Results", ""]
    summary = notes_dir / "summary.md"  # a hand-written overview that leads with the answer, before everything
    if summary.exists():
        header += [f"## Summary (written by hand, not generated; from `{summary.as_posix()}`)", "",
                   summary.read_text().strip(), "", "## How this page is made", ""]
    header += [
        "Generated by `medtl results " + " ".join(str(r) for r in runs) + f" --out {Path(out).parent}"
        + (f" --keep {','.join(keep)}" if keep else "") + "` from each run folder's "
        "report.json; every number in the generated sections and figures comes from those files. Hand-written notes "
        f"(from `{notes_dir.as_posix()}/<pipeline>.md`) say so in their heading and only quote those numbers. "
        "Verdict rule: a strategy *helped* over the baseline "
        "when the 95% intervals of its seed-mean metric and the baseline's do not overlap and its mean is better, "
        "*did worse* when they do not overlap and its mean is worse, and is *inconclusive* otherwise. The metric is "
        "AUROC in the per-task bullets and for binary learning curves, accuracy for multiclass learning curves, and "
        "MAE (lower is better) for regression.",
        "",
        "What the intervals cover: with several seeds, a 95% t-interval of the seed mean, which measures training "
        "randomness on the one test set; with a single run (or seeds that all scored the same), that run's "
        "bootstrap interval over the test cases, which measures the sampling of the test cases. They are "
        "different statements, and a row says which it uses: a mark after an interval names the exception (S: "
        "every seed scored the same, so the interval is the representative run's over the test cases; W and N: "
        "Wilson's and Newcombe's score intervals, for a proportion or an AUROC of 0 or 1, which the bootstrap "
        "cannot vary, and Newcombe's where wider for an AUROC with fewer than 50 cases in a class; D: an interval "
        "of no width, which is no certainty). The per-seed paired tests (DeLong's for AUROC, the "
        "paired t-test of absolute errors for MAE) are made on the same test cases and cover their sampling; "
        "DeLong's variance is cluster-robust (Obuchowski 1997) over patients and near-copy groups, as the "
        "bootstrap resamples them (the sections' notes count the near-copies), while the paired t-test takes the "
        "cases as independent. "
        "The verdicts by intervals are not corrected for multiple comparisons: a study with many strategies and "
        "budgets makes many verdicts, and the best other strategy at a budget is chosen by its mean, so expect "
        "some *helped* or *did worse* verdicts by chance alone. Non-overlapping 95% intervals are a stricter test "
        "than p < 0.05 for a difference. The per-seed test counts are given at p < 0.05 and again after Holm's "
        "step-down adjustment over all of the task's paired tests (every budget, strategy pair and seed, as in "
        "the run's report.json), which holds the chance of any false positive among them at 5%.",
        "",
    ]
    profiles = {json.loads((Path(r) / "environment.json").read_text()).get("profile") or "default" for r in runs}
    if profiles == {"cpu"}:  # said only of runs made so (each section names its run's profile)
        header += ["These are CPU-profile runs (small images, few epochs, capped data): they show what the pipeline "
                   "measures and how, not the best each strategy can reach.", ""]
    pipelines_dir = Path(__file__).resolve().parents[2] / "pipelines"
    kept = _previous_sections(Path(out), set(names), keep)
    sections += list(kept.values())
    shipped = {p.stem for p in pipelines_dir.glob("*.yaml")}
    # the project's own page lists its pipelines not yet run; a user's page of their own studies does not
    missing = sorted(shipped - set(names) - set(kept)) if shipped & (set(names) | set(kept)) else []
    if missing:
        header += ["Pipelines with no finished run on this page yet (run them, then regenerate this page):", ""]
        header += [f"- `{m}`: `medtl run pipelines/{m}.yaml --data-root ../shared/data --out runs/{m} --profile cpu`"
                   for m in missing]
        header.append("")
    header += recommendation_section([Path(r) for r in runs])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + sections) + "\n")
    return out
