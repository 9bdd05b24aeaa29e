import pytest

from medtl.evaluation.report.schema import Metric
from medtl.pipeline.results import verdict, write_results


def test_verdict_rule():
    a = Metric(value=0.9, ci_low=0.85, ci_high=0.95)
    b = Metric(value=0.7, ci_low=0.6, ci_high=0.8)
    assert verdict(a, b) == "helped" and verdict(b, a) == "did worse"
    assert verdict(a, Metric(value=0.88, ci_low=0.8, ci_high=0.9)).startswith("inconclusive")
    assert verdict(a, Metric(value=None)) == "undefined"


def test_results_page_from_a_run_folder(tiny_run, tmp_path):
    out = tiny_run
    (tmp_path / "results_notes").mkdir()
    (tmp_path / "results_notes" / "tiny.md").write_text("- A hand-written remark.\n")
    (tmp_path / "results_notes" / "summary.md").write_text("An overview.\n")
    page = write_results([out], tmp_path / "results.md").read_text()
    assert "### Notes on the tiny run (written by hand, not generated" in page and "- A hand-written remark." in page
    assert page.index("## tiny") < page.index("A hand-written remark.")
    assert page.index("## Summary (written by hand") < page.index("An overview.") < page.index("## tiny")
    assert "## tiny" in page and "Wall time" in page and "Hardware" in page
    # the command as it was run: this run's config file and output folder, no --profile for the default
    import os

    command = next(line for line in page.splitlines() if line.startswith("- Command:"))
    for path in (out.parent / "p.yaml", out):  # as a relative or an absolute path, whichever is shorter
        assert str(path) in command or os.path.relpath(path) in command
    assert "--profile" not in command and "pipelines/tiny.yaml" not in command
    figure = tmp_path / "results_figures" / "tiny_tumor.png"  # the forest plot beside the task's table
    assert figure.read_bytes().startswith(b"\x89PNG") and "](results_figures/tiny_tumor.png)" in page
    assert "| feature_extraction | fraction 0.5 |" in page and "AUROC" in page
    assert "cxr_to_mri2d" not in page  # a page of one's own study: the shipped pipelines are not listed
    # the recommendation made before training, beside what the run observed
    import json

    rec = json.loads((out / "report.json").read_text())["recommendation"]
    assert "## The recommendation against the outcomes" in page
    assert [o["label_fraction"] for o in rec["by_budget"]] == [0.5, 1.0]  # one ranking per label budget
    for o in rec["by_budget"]:
        row = next(line for line in page.splitlines()
                   if line.startswith(f"| tiny | {o['n_labelled']} ({o['label_fraction']:.3g}) |"))
        hit = "tie" if o["tie"] else {True: "yes", False: "no", None: "all equal"}[o["top1_is_best"]]
        best = f"tie: {', '.join(o['best_observed_tie'])}" if o["best_observed_tie"] else o["best_observed"]
        assert f"| {best} | {hit} |" in row
    assert f"Over all {len(rec['by_budget'])} rows" in page


def test_the_recommendation_is_ranked_again_for_each_label_budget(tiny_run, tmp_path, tiny, make_config, monkeypatch):
    """Each budget's ranking uses that budget's number of labelled cases: with all the training rows it is
    the similarity stage's ranking; where the linear probe's prior changes between budgets, so does its score."""
    import json
    import shutil

    from medtl.data.manifest import Manifest
    from medtl.pipeline import run_pipeline
    from medtl.strategies.finetune import FeatureExtraction

    out = tiny_run
    record = json.loads((out / "similarity" / "recommendation.json").read_text())
    full, half = json.loads((out / "report.json").read_text())["recommendation"]["by_budget"][::-1]
    n_train = len(Manifest.load(tiny / "manifests" / "tgt.csv").select(split="train"))
    assert full["n_labelled"] == n_train == record["target"]["n_labelled"] and 0 < half["n_labelled"] < n_train
    assert full["recommended"] == record["recommended"] and full["tie"] == record["tie"]

    run = tmp_path / "run"
    shutil.copytree(out, run)
    # "few" labels below a threshold between the two budgets: the probe's prior (0.8 few, 0.4 many) now differs
    monkeypatch.setattr(FeatureExtraction, "FEW_LABELS", (half["n_labelled"] + n_train) // 2 + 1)
    monkeypatch.setattr(FeatureExtraction, "LARGE_GAP", 2.0)  # no cap for a far source: the budget alone decides
    run_pipeline(make_config(tiny), tiny / "data", run, redo=("report",))
    again = json.loads((run / "report.json").read_text())["recommendation"]["by_budget"]
    notes = json.loads((run / "report.json").read_text())["notes"]
    assert sum(f"Recommendation with {o['n_labelled']} labelled cases" in n for o in again for n in notes) == 2
    assert again[0]["n_labelled"] == half["n_labelled"]
    from medtl.pipeline.runner import _ranking  # the same ranking, computed directly with each budget's count
    from medtl.pipeline.context import Context
    from medtl.pipeline import load_pipeline

    ctx = Context(load_pipeline(make_config(tiny)), make_config(tiny), (tiny / "data").resolve(), run, None)
    results = json.loads((run / "similarity" / "similarity.json").read_text())
    few, many = (_ranking(ctx, results, o["n_labelled"]) for o in again)
    probe = next(r for r in few["ranking"] if r["strategy"] == "feature_extraction")["scores"]["strategy_prior"]
    assert probe == 0.8 and next(r for r in many["ranking"]
                                 if r["strategy"] == "feature_extraction")["scores"]["strategy_prior"] == 0.4
    assert [o["recommended"] for o in again] == [few["recommended"], many["recommended"]]
    # the report stored each budget's own ranking: the probe's composite differs between them
    stored = [{r["key"]: r["composite"] for r in o["ranking"]} for o in again]
    assert stored == [{r["key"]: r["composite"] for r in x["ranking"]} for x in (few, many)]
    key = next(r["key"] for r in few["ranking"] if r["strategy"] == "feature_extraction")
    assert stored[0][key] > stored[1][key]


def test_results_page_counts_scored_test_images_in_near_copy_groups(tiny_run, tmp_path):
    import csv
    import json
    import shutil
    from dataclasses import replace

    from medtl.data.manifest import Manifest

    out = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    with open(run / "predictions.csv", newline="") as f:
        scored = sorted({r["case_id"] for r in csv.DictReader(f) if r["split"] == "test"})
    assert len(scored) >= 3
    # a target manifest where three scored test images form one group and one more test image has no copy
    env = json.loads((run / "environment.json").read_text())
    target = Manifest.load(env["manifests"]["target"])
    grouped = set(scored[:3])
    rows = [replace(r, extras={**r.extras, "near_copy_group": "g1" if r.path in grouped else ""}) for r in target]
    meta = {**target.meta, "near_copy_groups": 1, "near_copy_images": 3,
            "near_copy_groups_by_split": {"train": {"groups": 0, "images": 0}, "val": {"groups": 0, "images": 0},
                                          "test": {"groups": 1, "images": 3}}}
    Manifest(rows, target.label_names, meta).save(tmp_path / "tgt.csv")
    env["manifests"]["target"] = str(tmp_path / "tgt.csv")
    (run / "environment.json").write_text(json.dumps(env))
    page = write_results([run], tmp_path / "results.md").read_text()
    assert "of which 1 groups (3 images) sit wholly in the test split" in page
    assert f"of the {len(scored)} target test images scored, 3 belong to 1 near-copy groups" in page


def test_sections_of_pipelines_without_a_run_folder_can_be_kept_from_the_previous_page(tiny_run, tmp_path):
    from medtl.pipeline.results import KEPT_MARK

    out = tiny_run
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nold header\n\n## cxr_to_mri3d\n\nold 3D numbers 1.23\n\n## cxr_site_shift\n\nold cxr\n")
    text = write_results([out], page, keep=("cxr_to_mri3d",)).read_text()
    assert "old 3D numbers 1.23" in text and KEPT_MARK in text and "old header" not in text
    assert "old cxr" not in text and "`cxr_site_shift`: `medtl run" in text  # not kept: listed as missing
    assert text.index("## tiny") < text.index("## cxr_to_mri3d")
    again = write_results([out], page, keep=("all",)).read_text()  # keeping twice adds the mark once
    assert again.count(KEPT_MARK) == 1 and "old 3D numbers 1.23" in again


def test_learning_curve_section_reports_the_best_strategy_per_fraction_against_the_baseline(tiny, make_config,
                                                                                              tmp_path):
    from medtl.evaluation.report.schema import read_report
    from medtl.pipeline import run_pipeline
    from medtl.pipeline.results import learning_curve_section

    text = (make_config.config.replace("EPOCHS", "1")
            .replace("strategies: [feature_extraction, full, dann]", "strategies: [scratch, feature_extraction, full]")
            .replace("label_fractions: [0.5, 1.0]", "label_fractions: [0.3, 0.6, 1.0]"))
    path = tiny / "curve.yaml"
    path.write_text(text)
    out = tiny / "curve_run"
    run_pipeline(path, tiny / "data", out, progress=False)
    task = next(iter(read_report(out / "report.json").tasks.values()))
    lines = learning_curve_section("curve", "tumor", task, tmp_path / "figs")
    assert (tmp_path / "figs" / "curve_tumor_learning_curve.png").stat().st_size > 1000
    rows = [line for line in lines if line.startswith("| 0") or line.startswith("| 1")]
    assert [r.split("|")[1].strip() for r in rows] == ["0.3", "0.6", "1"]
    metric = {"binary": "auroc", "multiclass": "accuracy"}[task.kind]
    assert f"`tumor` {metric} by label fraction" in lines[0]
    for row, fraction in zip(rows, (0.3, 0.6, 1.0)):
        by = {name: next(e.metrics[metric] for e in s.entries() if e.label_fraction == fraction)
              for name, s in task.strategies.items()}
        best = max((n for n in by if n != "scratch"), key=lambda n: by[n].value)
        cells = [c.strip() for c in row.split("|")]
        assert cells[3] == f"`{best}`"
        assert cells[6] == f"{by[best].ci_low - by['scratch'].ci_high:+.3f}"  # the margin, from the report's numbers
        assert cells[5] == verdict(by[best], by["scratch"])
        tests = [c for c in task.comparisons if {c.strategy_a, c.strategy_b} == {best, "scratch"}
                 and c.label_fraction == fraction and c.p_value is not None]
        signed = [(c.auc_a - c.auc_b) * (1 if c.strategy_a == best else -1) for c in tests]  # best - scratch
        higher = sum(d > 0 and c.p_value < 0.05 for d, c in zip(signed, tests))
        lower = sum(d < 0 and c.p_value < 0.05 for d, c in zip(signed, tests))
        n_task = sum(c.p_value is not None for c in task.comparisons)
        holm_higher = sum(d > 0 and c.p_holm < 0.05 for d, c in zip(signed, tests))
        holm_lower = sum(d < 0 and c.p_holm < 0.05 for d, c in zip(signed, tests))
        assert all(c.p_holm >= c.p_value for c in tests)  # an adjusted p is never smaller
        assert cells[7] == (f"higher in {higher}, lower in {lower} of {len(tests)} seeds (p < 0.05; after Holm over "
                            f"the task's {n_task} tests: higher in {holm_higher}, lower in {holm_lower})"
                            if tests else "-")
    # one fraction is not a curve
    one = task.model_copy(deep=True)
    for s in one.strategies.values():
        s.by_label_fraction = [e for e in s.entries() if e.label_fraction == 0.6]
    assert len(one.strategies["scratch"].entries()) == 1
    assert learning_curve_section("curve", "tumor", one, None) == []


def test_the_training_mean_baseline_is_judged_by_its_test_case_interval_and_a_paired_test_per_seed():
    """Seeds of the training-mean baseline that predict different constants between the two middle targets of an
    even-sized test set all score the same MAE: its t-interval over seeds has zero width, so the page uses its
    bootstrap interval (evaluate's aggregation gives it), and each model is also tested against it per seed on the same
    cases."""
    import numpy as np
    import pandas as pd

    from medtl.evaluation import evaluate_predictions, predictions_from_arrays
    from medtl.evaluation.report.schema import Report
    from medtl.pipeline.results import _task_section

    rng = np.random.default_rng(0)
    y = np.sort(rng.uniform(20, 80, 20))
    middle = (y[9], y[10])
    ids = [f"c{i:02d}" for i in range(20)]
    tables = []
    for seed in range(3):
        const = middle[0] + (seed + 1) / 4 * (middle[1] - middle[0])  # a different constant each seed, same MAE
        tables.append(predictions_from_arrays(ids, y, prediction=np.full(20, const), run_id=f"mean{seed}",
                                              strategy="training_mean", task="age", seed=seed))
        tables.append(predictions_from_arrays(ids, y, prediction=y + rng.normal(0, 3, 20), run_id=f"model{seed}",
                                              strategy="finetune", task="age", seed=seed))
    task = Report.from_dict(evaluate_predictions(pd.concat(tables, ignore_index=True), n_boot=200)).tasks["age"]
    base = task.strategies["training_mean"]
    boot = base.representative().metrics["mae"]
    assert boot.ci_low < boot.value < boot.ci_high
    # a t-interval over seeds would have zero width: the aggregation gives the representative run's instead
    assert (base.metrics["mae"].ci_low, base.metrics["mae"].ci_high) == (boot.ci_low, boot.ci_high)
    assert base.metrics["mae"].ci_method.startswith("Same in every run")
    text = "\n".join(_task_section("age", task))
    assert f"| training_mean | 3 | {boot.value:.2f} ({boot.ci_low:.2f}–{boot.ci_high:.2f} S) |" in text
    assert "every seed reached the same MAE" in text
    line = next(x for x in text.splitlines() if x.startswith("- `finetune`"))
    assert "better than the baseline" in line and "paired t-test: MAE higher in 0, lower in 3 of 3 seeds" in line


def test_two_run_folders_of_one_pipeline_are_refused_not_drawn_into_one_figure(tiny_run, tmp_path):
    import shutil

    from medtl.errors import MedtlError

    copy = shutil.copytree(tiny_run, tmp_path / "again")
    with pytest.raises(MedtlError, match="2 run folders of pipeline 'tiny'"):
        write_results([tiny_run, copy], tmp_path / "results.md")


def test_a_page_of_ones_own_studies_does_not_list_the_projects_pipelines(tiny_run, tmp_path):
    page = write_results([tiny_run], tmp_path / "results.md").read_text()
    assert "no finished run on this page yet" not in page  # 'tiny' is not one of pipelines/*.yaml


def test_a_pipeline_name_with_a_path_in_it_writes_no_figure_outside_the_page(tiny_run, tmp_path):
    """A security review: a received run folder whose config.yaml named the pipeline '../../ESCAPED' made the
    results page write ESCAPED_<task>.png two folders above its figures folder."""
    import shutil

    import yaml

    run = shutil.copytree(tiny_run, tmp_path / "received")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["name"] = "../../ESCAPED"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page = write_results([run], tmp_path / "a" / "b" / "results.md").read_text()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*ESCAPED*"))
    assert written and all(p.parts[:3] == ("a", "b", "results_figures") for p in written), written
    assert all(f"](results_figures/{p.name})" in page for p in written)


def test_a_run_that_has_not_finished_is_refused_not_shown_with_its_earlier_report(tiny_run, tmp_path):
    """A review grew a finished run (a seed and a strategy added, as the README says) and killed it after a few new
    jobs: `medtl results` built the page from the old report.json, under the new config's seeds, with nothing
    saying the new strategy and jobs were missing."""
    import json
    import shutil

    from medtl.errors import MedtlError

    run = tmp_path / "grown"
    shutil.copytree(tiny_run, run)
    stages = json.loads((run / "stages.json").read_text())
    stages["transfer"]["status"] = "running"  # as StageBook.reopen leaves it while the new jobs run
    (run / "stages.json").write_text(json.dumps(stages))
    with pytest.raises(MedtlError, match=r"the run has not finished: stage\(s\) transfer still to run"):
        write_results([run], tmp_path / "results.md")
    assert not (tmp_path / "results.md").exists()
    # a stage the config no longer runs stays unfinished for good: similarity interrupted, then switched off (the
    # diff review: the page was refused forever, and rerunning as the message said changed nothing)
    import yaml

    stages["transfer"]["status"] = "done"
    stages["similarity"] = {**stages.get("similarity", {}), "status": "running"}
    (run / "stages.json").write_text(json.dumps(stages))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["similarity"] = {**(config.get("similarity") or {}), "enabled": False}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert "## tiny" in write_results([run], tmp_path / "results.md").read_text()


def test_one_run_against_several_seeds_ties_and_a_budget_without_the_baseline_are_said_not_hidden():
    """A statistician's review of the page: (1) one `alpha` run tested against each of scratch's 5 seeds was counted
    "of 5 seeds" and its interval over the test cases was set against scratch's t-interval over seeds unmarked;
    (2) a budget where scratch had no run vanished from the verdicts; (3) two strategies tied for best showed one;
    (4) a strategy that never ran at a budget read "undefined"."""
    import numpy as np
    import pandas as pd

    from medtl.evaluation import evaluate_predictions, predictions_from_arrays
    from medtl.evaluation.report.schema import Report
    from medtl.pipeline.results import _task_section, learning_curve_section

    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    ids = [f"c{i:02d}" for i in range(60)]

    def run(strategy, seed, fraction, skill):
        p1 = 1 / (1 + np.exp(-(skill * (2 * y - 1) + rng.normal(0, 1, 60))))
        return predictions_from_arrays(ids, y, np.stack([1 - p1, p1], 1), class_names=["no", "yes"], run_id=f"s{seed}f{fraction}",
                                       strategy=strategy, task="t", seed=seed, label_fraction=fraction)

    tables = [run("scratch", s, 1.0, 0.5) for s in range(5)] + [run("scratch", s, 0.2, 0.3) for s in range(5)]
    tables += [run("alpha", 0, 1.0, 2.0), run("alpha", 0, 0.5, 1.0), run("alpha", 0, 0.2, 1.5)]
    twin = run("beta", 0, 0.2, 1.5)
    twin[[c for c in twin.columns if c.startswith("prob_")]] = tables[-1][[c for c in twin.columns
                                                                          if c.startswith("prob_")]].to_numpy()
    tables.append(twin)
    task = Report.from_dict(evaluate_predictions(pd.concat(tables, ignore_index=True), n_boot=100)).tasks["t"]
    bullets = "\n".join(_task_section("t", task))
    line = next(x for x in bullets.splitlines() if x.startswith("- `alpha` at fraction 1"))
    assert "of 5 tests, the one `alpha` run against each of `scratch`'s 5 runs" in line and "of 5 seeds" not in line
    assert "[S: one interval is over the test cases, the other over seeds]" in line
    assert "(`alpha`: one run, its bootstrap interval over the test cases; the other: a t-interval over 5 seeds)" in line
    assert "- `alpha` at fraction 0.5: not compared, `scratch` has no run at this budget" in bullets
    curve = "\n".join(learning_curve_section("p", "t", task, None))
    assert "| 0.5 | not run | - | - | `scratch` has no result here (not run): nothing to judge against |" in curve
    assert "`alpha` (tied with `beta`)" in curve or "`beta` (tied with `alpha`)" in curve
    beta = next(x for x in curve.splitlines() if x.startswith("| `beta` |"))
    assert beta.endswith("| not run | not run |")  # beta ran at 0.2 only: the other budgets say so
