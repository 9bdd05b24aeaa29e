"""Diagnostic validation: predictions table -> metrics with CIs, calibration, comparisons -> reports.

Three layers, MONAI-style: pure functions on arrays (metrics, calibration, bootstrap, delong, paired,
thresholds), the predictions table that collects a run's outputs (``predictions``: built by
``predictions_from_arrays`` from ``medtl.engine.evaluate.predict``), and the report (evaluate + report)
that calls them. Grad-CAM lives in ``explain``
(imported on use: it needs torch and MONAI).
"""

from medtl.evaluation.bootstrap import bootstrap_ci, bootstrap_counts, bootstrap_samples, percentile_interval, seed_summary
from medtl.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_errors,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    reliability,
)
from medtl.evaluation.delong import DeLongResult, delong_covariance, delong_test
from medtl.evaluation.evaluate import EvalSettings, evaluate_predictions, evaluate_run, load_report
from medtl.evaluation.metrics import (
    auroc,
    average_precision,
    classification_metrics,
    confusion_matrix,
    pr_curve,
    regression_metrics,
    roc_curve,
)
from medtl.evaluation.paired import PairedErrorResult, paired_error_test
from medtl.evaluation.predictions import (
    load_predictions,
    predictions_from_arrays,
    validate_predictions,
    write_predictions,
)
from medtl.evaluation.report import combine, combine_reports, make_report, render_report
from medtl.evaluation.thresholds import Threshold, apply_threshold, choose_threshold

__all__ = [
    "DeLongResult", "EvalSettings", "PairedErrorResult", "Threshold",
    "apply_temperature", "apply_threshold", "auroc", "average_precision", "bootstrap_ci", "bootstrap_samples",
    "bootstrap_counts", "brier_score", "calibration_errors", "choose_threshold", "classification_metrics",
    "combine", "combine_reports", "confusion_matrix", "delong_covariance", "delong_test", "evaluate_predictions",
    "evaluate_run", "expected_calibration_error", "fit_temperature", "load_predictions", "load_report",
    "make_report", "maximum_calibration_error", "paired_error_test", "percentile_interval", "pr_curve",
    "predictions_from_arrays",
    "regression_metrics", "reliability", "render_report", "roc_curve", "seed_summary", "validate_predictions",
    "write_predictions",
]  # fmt: skip
