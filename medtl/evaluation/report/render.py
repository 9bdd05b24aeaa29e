"""From a report (dict or Report) to report.json, report.md, report.html and figures/*.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medtl.errors import MedtlError
from medtl.evaluation.embedding import Embedding, embed_features
from medtl.evaluation.evaluate import EvalSettings, evaluate_predictions
from medtl.evaluation.report import sections
from medtl.evaluation.report.document import Document, write_document
from medtl.evaluation.report.schema import Report


def output_folder(out_dir: str | Path) -> Path:
    """``out_dir`` with its figures/ folder, created now: callers run this before computing a report, so a
    folder that cannot be made (a file in its path, no permission) fails at once with a MedtlError."""
    out = Path(out_dir)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedtlError(f"cannot create the output folder: {err.strerror or err}", out) from None
    return out


def render_report(
    report: dict | Report,
    out_dir: str | Path,
    *,
    metrics_log: str | Path | None = None,
    features=None,
    embedding: str = "pca",
    gradcam: Sequence[str | Path] | None = None,
    title: str = "medtl evaluation report",
) -> dict[str, Path]:
    """Write report.json, report.md, report.html and figures/*.png for a report into ``out_dir``.

    ``metrics_log``: CSV or JSON-lines training log (learning curves); ``features``: ``.npz`` with
    ``features`` and ``domain`` arrays, a CSV with a ``domain`` column, ``(array, domains)``, or an
    :class:`~medtl.evaluation.embedding.Embedding` already computed (``embedding``: pca or tsne);
    ``gradcam``: PNG files (e.g. from explain.save_gradcam). Returns the paths written.
    """
    typed = Report.from_dict(report)  # a copy: the caller's report is not changed
    # the embedding is computed first, so a bad features file fails before anything is written
    emb = None
    if features is not None:
        emb = features if isinstance(features, Embedding) else embed_features(
            features, embedding, typed.settings.seed)
    report = typed.to_dict()  # the sections read the report.json content
    out = output_folder(out_dir)
    doc = Document(level=f"{report['settings'].get('level', 0.95):.0%}")
    fig_list: list[dict] = []
    extras: dict = {}
    doc.h(1, title)
    doc.p(f"Created {report.get('created', '')} by medtl {report.get('medtl_version', '')} from "
          + ", ".join(f"`{s}`" for s in report.get("sources", [])) + ".")  # fmt: skip
    extras["what_was_run"] = sections.what_was_run(doc, report, out)
    if report.get("notes"):
        doc.p("**Notes**")
        doc.bullets(report["notes"])
    for name, t in report["tasks"].items():
        sections.task_section(doc, name, t, fig_list)
    if metrics_log is not None:
        extras["learning_curves"] = sections.learning_curves(doc, metrics_log, fig_list)
    if emb is not None:
        extras["embedding"] = sections.embedding_section(doc, emb, fig_list)
    if gradcam:
        extras["gradcam"], faithfulness = sections.gradcam_section(doc, gradcam, fig_list)
        if faithfulness:
            extras["gradcam_faithfulness"] = faithfulness
    sections.methods_section(doc, report)

    typed.figures = fig_list
    typed.extras = extras
    paths = {"json": out / "report.json", **write_document(doc, out, title)}
    paths["json"].write_text(typed.to_json())
    return {k: paths[k] for k in ("json", "md", "html", "figures")}


def make_report(
    predictions,
    out_dir: str | Path,
    *,
    settings: EvalSettings | None = None,
    metrics_log=None,
    features=None,
    embedding: str = "pca",
    gradcam=None,
    **settings_kwargs,
) -> dict[str, Path]:
    """Evaluate a predictions table (DataFrame, path, or list) and write the full report; one call."""
    report = evaluate_predictions(predictions, settings, **settings_kwargs)
    return render_report(report, out_dir, metrics_log=metrics_log, features=features, embedding=embedding,
                         gradcam=gradcam)  # fmt: skip
