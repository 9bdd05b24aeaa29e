"""The report's document model: blocks written once, rendered to both Markdown and self-contained HTML.

Markdown and HTML come from one block list, so they say the same things; figures are kept as PNG bytes
(files beside report.md, inlined as data URIs in report.html).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path


def figure_name(name: str) -> str:
    """The file name a figure is stored under (figures/<name>): safe on every file system."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class Document:
    """Blocks rendered to both Markdown and HTML; figures are kept as PNG bytes."""

    def __init__(self, level: str = "95%"):
        self.level = level  # the CI level, for captions
        self.blocks: list[tuple] = []
        self.figures: dict[str, tuple[bytes, str]] = {}

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def warn(self, text: str):
        """A paragraph set apart (a quote in Markdown, a shaded box in HTML): what a reader must not miss."""
        self.blocks.append(("warn", text))

    def bullets(self, items: Sequence[str]):
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None):
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows], caption))

    def figures_row(self, items: Sequence[tuple[str, bytes, str]]):
        """``items``: (file name, PNG bytes, caption), shown side by side."""
        names = []
        for name, png, caption in items:
            name = figure_name(name)
            self.figures[name] = (png, caption)
            names.append(name)
        if names:
            self.blocks.append(("figs", names))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "warn":
                out.append(f"> **Warning.** {b[1]}")
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(map(cell, b[1])) + " |", "|" + "---|" * len(b[1])]
                lines += ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]]
                if b[3]:
                    lines.append(f"\n*{b[3]}*")
                out.append("\n".join(lines))
            elif b[0] == "figs":
                out.append("\n\n".join(f"![{self.figures[n][1]}](figures/{n})" for n in b[1]))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            if b[0] == "h":  # an id per heading, so a section can be linked (report.html#learning-curves)
                slug = re.sub(r"[^a-z0-9]+", "-", b[2].lower()).strip("-")
                body.append(f'<h{b[1]} id="{slug}">{e(b[2])}</h{b[1]}>')
            elif b[0] == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "warn":
                body.append(f'<p class="warn"><b>Warning.</b> {_inline(b[1])}</p>')
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in b[2])
                cap = f"<caption>{_inline(b[3])}</caption>" if b[3] else ""
                body.append(f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
            elif b[0] == "figs":
                figs = []
                for n in b[1]:
                    png, caption = self.figures[n]
                    data = base64.b64encode(png).decode("ascii")
                    figs.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                                f"<figcaption>{e(caption)}</figcaption></figure>")  # fmt: skip
                body.append('<div class="figs">' + "".join(figs) + "</div>")
        return _HTML.format(title=e(title), body="\n".join(body))


WRAP_AT = 40  # characters: longer cells (notes, reasons) wrap, so no table is wider than the page


def _td(text: str) -> str:
    return f'<td class="wrap">{_cell(text)}</td>' if len(text) > WRAP_AT else f"<td>{_cell(text)}</td>"


def _cell(text: str) -> str:
    first, _, second = html.escape(text).partition("\n")
    return f'{first}<br><span class="ci">{second}</span>' if second else first


def _inline(text: str) -> str:
    """Escape, then turn Markdown `code` and **bold** into HTML."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1.5em; color: #1d2430; line-height: 1.45; }}
h1 {{ border-bottom: 2px solid #2a6ebb; padding-bottom: .2em; }}
h2 {{ border-bottom: 1px solid #ccd; padding-bottom: .15em; margin-top: 1.8em; }}
.tw {{ overflow-x: auto; margin: .8em 0 1.2em; }}
table {{ border-collapse: collapse; font-size: 13px; }}
caption {{ caption-side: bottom; text-align: left; font-size: 12px; color: #556; padding-top: .4em; }}
th, td {{ border: 1px solid #ccd3de; padding: 4px 8px; text-align: left; white-space: nowrap; }}
th {{ background: #eef2f8; }}
td.wrap {{ white-space: normal; min-width: 14em; max-width: 28em; }}
.warn {{ background: #fff4e0; border-left: 4px solid #e08a00; padding: .4em .8em; }}
@media print {{ .tw {{ overflow: visible; }} }}
tbody tr:nth-child(even) {{ background: #f8f9fc; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }}
figure {{ margin: 0; display: table; }}
figure img {{ max-width: 100%; border: 1px solid #e3e6ec; }}
figcaption {{ display: table-caption; caption-side: bottom; font-size: 12px; color: #556; padding-top: .3em; }}
.ci {{ color: #5a6472; font-size: 11.5px; }}
code {{ background: #f1f3f7; padding: 0 3px; border-radius: 3px; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_document(doc: Document, out: str | Path, title: str) -> dict[str, Path]:
    """figures/*.png, report.md and report.html into ``out``; the paths written (report.json is the schema's)."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, (png, _) in doc.figures.items():
        (out / "figures" / name).write_bytes(png)
    paths = {"md": out / "report.md", "html": out / "report.html", "figures": out / "figures"}
    paths["md"].write_text(doc.markdown())
    paths["html"].write_text(doc.html(title))
    return paths
