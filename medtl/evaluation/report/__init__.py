"""Reports from one call: report.json (the numbers), report.md and a self-contained report.html.

``make_report(predictions, out_dir)`` evaluates a predictions table (evaluate.py) and renders it;
``combine(inputs, out_dir)`` merges several predictions tables and report.json files into one
comparison report. Rendering reads only the report (plus optional extras: a metrics log for learning
curves, an embedding of features, Grad-CAM PNGs), so a report.json can always be re-rendered.

    schema.py    the typed report (Report, Task, Strategy, Run, Metric ...): report.json's one definition
    document.py  the block document, written to Markdown and HTML (the HTML template)
    sections.py  the sections a report is made of
    render.py    render_report, make_report
    combine.py   combine_reports, combine
"""

from medtl.evaluation.evaluate import SCHEMA, SCHEMA_VERSION, EvalSettings
from medtl.evaluation.report.combine import combine, combine_reports
from medtl.evaluation.report.render import make_report, render_report
from medtl.evaluation.report.schema import Report, read_report

__all__ = ["EvalSettings", "Report", "SCHEMA", "SCHEMA_VERSION", "combine", "combine_reports", "make_report",
           "read_report", "render_report"]
