from medtl.pipeline.results import _verdict, write_results


def test_verdict_rule():
    a = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    b = {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8}
    assert _verdict(a, b) == "helped" and _verdict(b, a) == "did worse"
    assert _verdict(a, {"value": 0.88, "ci_low": 0.8, "ci_high": 0.9}).startswith("inconclusive")
    assert _verdict(a, {"value": None}) == "undefined"


def test_results_page_from_a_run_folder(tmp_path, tiny, make_config):
    # reuse the tiny pipeline run of test_pipeline.py when it ran in this session, else make one
    from medtl.pipeline import run_pipeline

    out = tiny / "run"
    if not (out / "report.json").exists():
        run_pipeline(make_config(tiny), tiny / "data", out)
    page = write_results([out], tmp_path / "results.md").read_text()
    assert "## tiny" in page and "Wall time" in page and "Hardware" in page
    assert "| feature_extraction | 0.5 |" in page and "AUROC" in page
    assert "cxr_to_mri2d" in page  # shipped pipelines without a run are listed, with their command
