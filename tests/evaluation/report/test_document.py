"""The block document: one block list, the same content in Markdown and HTML."""

from __future__ import annotations

from medtl.evaluation.report.document import Document, figure_name, write_document


def _doc() -> Document:
    doc = Document()
    doc.h(2, "Learning curves")
    doc.p("A `code` and **bold** <text>")
    doc.warn("small test set")
    doc.table(["A", "B"], [["short", "x" * 60], ["0.8\n(0.7–0.9)", "a|b"]], "caption")
    doc.figures_row([("a b/c.png", b"\x89PNGdata", "cap")])
    return doc


def test_markdown_blocks():
    md = _doc().markdown()
    assert "## Learning curves" in md and "> **Warning.** small test set" in md
    assert "| A | B |\n|---|---|\n| short | " + "x" * 60 + " |" in md
    assert "| 0.8 (0.7–0.9) | a\\|b |" in md and "*caption*" in md
    assert "![cap](figures/a_b_c.png)" in md


def test_html_escapes_wraps_long_cells_and_inlines_figures():
    html = _doc().html("t <1>")
    assert "<title>t &lt;1&gt;</title>" in html and '<h2 id="learning-curves">' in html
    assert "<p>A <code>code</code> and <b>bold</b> &lt;text&gt;</p>" in html
    assert "<td>short</td>" in html and '<td class="wrap">' + "x" * 60 + "</td>" in html
    assert '<td>0.8<br><span class="ci">(0.7–0.9)</span></td>' in html  # the interval on a second line
    assert 'src="data:image/png;base64,iVBOR' in html


def test_write_document(tmp_path):
    paths = write_document(_doc(), tmp_path, "t")
    assert (tmp_path / "figures" / "a_b_c.png").read_bytes() == b"\x89PNGdata"
    assert paths["md"].read_text().startswith("## Learning curves") and paths["html"].is_file()
    assert figure_name("x:y z.png") == "x_y_z.png"
