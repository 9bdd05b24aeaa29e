"""Report figures, drawn with matplotlib's Agg backend from report.json data; each returns PNG bytes.

Figures are drawn from the report's stored numbers (not from raw predictions), so a combined report
built from several report.json files can redraw them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

_DPI = 100
PANELS_PER_ROW = 4  # per-strategy panels wrap: 14 in one row shrank their text to 2 px in the HTML


def subplots(*args, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` makes them, but as a standalone ``Figure``: pyplot's backend
    and figure list stay untouched, so a notebook's inline plots keep working and nothing needs closing."""
    from matplotlib.figure import Figure

    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def _fmt(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "undefined"
    if m.get("ci_low") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def roc_figure(curves: Sequence[dict], title: str) -> bytes:
    """``curves``: dicts with label, fpr, tpr, tpr_low, tpr_high (bands optional), auc (metric dict), and
    optionally ``point`` ``(fpr, tpr, threshold)``: the operating point the report's sensitivity and
    specificity describe, marked on the curve."""
    fig, ax = subplots(figsize=(5, 4.6))
    for c in curves:
        (line,) = ax.plot(c["fpr"], c["tpr"], lw=1.8, label=f"{c['label']}: AUROC {_fmt(c.get('auc'))}")
        if c.get("tpr_low") is not None:
            ax.fill_between(c["fpr"], _arr(c["tpr_low"]), _arr(c["tpr_high"]), color=line.get_color(), alpha=0.18, lw=0)
        if c.get("point") is not None:
            x, y, thr = c["point"]
            ax.plot([x], [y], ls="none", marker="o", ms=7, mfc="white", mec=line.get_color(), mew=2, zorder=4,
                    label=f"  operating point (threshold {thr:.3g}): sens {y:.2f}, spec {1 - x:.2f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title)
    ax.legend(loc="lower right", fontsize=7.5)
    ax.grid(alpha=0.3)
    return to_png(fig)


def pr_figure(curves: Sequence[dict], title: str) -> bytes:
    """``curves``: label, recall, precision, precision_low/high, prevalence, ap (metric dict)."""
    fig, ax = subplots(figsize=(5, 4.6))
    for c in curves:
        (line,) = ax.plot(c["recall"], c["precision"], lw=1.8, drawstyle="steps-post",
                          label=f"{c['label']}: AUPRC {_fmt(c.get('ap'))}")  # fmt: skip
        if c.get("precision_low") is not None:
            ax.fill_between(c["recall"], _arr(c["precision_low"]), _arr(c["precision_high"]), step="post",
                            color=line.get_color(), alpha=0.18, lw=0)  # fmt: skip
        if c.get("prevalence") is not None:
            ax.axhline(c["prevalence"], ls=":", lw=1, color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.legend(loc="lower left", fontsize=7.5)
    ax.grid(alpha=0.3)
    return to_png(fig)


def reliability_figure(panels: Sequence[dict], title: str, xlabel: str) -> bytes:
    """One panel per strategy (``panels``: title, lines); each line: label, reliability, ece, style.

    Marker area grows with the number of cases in the bin, so sparse bins do not look as certain as
    full ones; the lower row shows the cases per bin.
    """
    n = len(panels)
    cols = min(n, PANELS_PER_ROW)
    grid_rows = int(np.ceil(n / cols))
    fig, axes = subplots(2 * grid_rows, cols, figsize=(3.4 * cols + 0.3, 4.6 * grid_rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1] * grid_rows})  # fmt: skip
    for j in range(n, grid_rows * cols):  # the last row's empty places
        axes[2 * (j // cols), j % cols].axis("off")
        axes[2 * (j // cols) + 1, j % cols].axis("off")
    for j, panel in enumerate(panels):
        ax, axh = axes[2 * (j // cols), j % cols], axes[2 * (j // cols) + 1, j % cols]
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        for line in panel["lines"]:
            r = line["reliability"]
            edges = np.asarray(r["edges"])
            conf, obs = _arr(r["confidence"]), _arr(r["observed"])
            cnt = np.asarray(r["count"], dtype=float)
            ok = ~np.isnan(conf)
            (l,) = ax.plot(conf[ok], obs[ok], lw=1.3, ls=line.get("style", "-"),
                           label=f"{line['label']}: ECE {_fmt(line.get('ece'))}")  # fmt: skip
            ax.scatter(conf[ok], obs[ok], s=6 + 60 * np.sqrt(cnt[ok] / max(cnt.max(), 1)), color=l.get_color(), zorder=3)
            axh.stairs(cnt, edges, color=l.get_color(), ls=line.get("style", "-"))
        ax.set(xlim=(0, 1), ylim=(0, 1), title=panel["title"])
        ax.title.set_fontsize(9)
        ax.legend(loc="upper left", fontsize=6.5)
        ax.grid(alpha=0.3)
        axh.set(xlabel=xlabel, xlim=(0, 1))
        axh.grid(alpha=0.3)
        if j % cols == 0:
            ax.set_ylabel("observed frequency")
            axh.set_ylabel("cases")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title above the panels
    return to_png(fig)


def confusion_figure(matrices: Sequence[dict], title: str) -> bytes:
    """``matrices``: label, classes, counts (rows true, columns predicted)."""
    n = len(matrices)
    k = max(len(m["classes"]) for m in matrices)
    size = 1.2 + 0.55 * k
    cols = min(n, PANELS_PER_ROW)
    grid_rows = int(np.ceil(n / cols))
    fig, axes = subplots(grid_rows, cols, figsize=(size * cols + 0.8 * (cols - 1) + 0.6, (size + 1.4) * grid_rows),
                             squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for j, (ax, m) in enumerate(zip(axes.ravel(), matrices)):
        cm = np.asarray(m["counts"], dtype=float)
        rows = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for k in range(cm.shape[1]):
                ax.text(k, i, f"{int(cm[i, k])}\n{frac[i, k]:.0%}", ha="center", va="center", fontsize=7.5,
                        color="white" if frac[i, k] > 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(m["classes"])), m["classes"], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(m["classes"])), m["classes"], fontsize=8)
        ax.set_xlabel("predicted")
        if j % cols == 0:
            ax.set_ylabel("true")
        ax.set_title(m["label"], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title above the panels
    return to_png(fig)


def label_fraction_figure(series: Sequence[dict], metric: str, title: str,
                          xlabel: str = "fraction of target labels used", baseline: str | None = None) -> bytes:
    """``series``: label, x (fractions, or counts with their ``xlabel``), y, low, high (interval per point).
    ``baseline``: the label drawn in black, thicker, with its band, for the others to be read against.
    Every series gets its own colour (up to 20) and the legend sits beside the axes, off the lines."""
    many = len(series) > 6
    fig, ax = subplots(figsize=(7.4 if many else 5.2, 4.2 if many else 4))
    colours = colormap("tab20" if len(series) > 10 else "tab10").colors
    others = [s for s in series if s["label"] != baseline]
    for i, s in enumerate(others + [s for s in series if s["label"] == baseline]):
        x, y = np.asarray(s["x"], dtype=float), _arr(s["y"])
        lo, hi = _arr(s["low"]), _arr(s["high"])
        is_base = s["label"] == baseline
        colour = "black" if is_base else colours[i % len(colours)]
        ax.plot(x, y, marker="s" if is_base else "o", lw=2.4 if is_base else 1.4, color=colour, label=s["label"],
                zorder=3 if is_base else 2)
        # with many series only the baseline's band is drawn: a dozen overlapping bands hide each other
        if is_base or not many:
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15 if is_base else 0.18, lw=0)
    ax.set_xscale("log")
    ticks = sorted({float(x) for s in series for x in s["x"]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel=f"{xlabel} (log scale)", ylabel=metric, title=title)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
    else:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return to_png(fig)


def scatter_figure(series: Sequence[dict], title: str, quantity: str = "value") -> bytes:
    """Regression: predicted against true ``quantity`` (the task's name, e.g. age, in its label units;
    ``series``: label, points {label, prediction}), identity line."""
    fig, ax = subplots(figsize=(4.8, 4.6))
    lo, hi = np.inf, -np.inf
    for s in series:
        y = np.asarray(s["points"]["label"], dtype=float)
        f = np.asarray(s["points"]["prediction"], dtype=float)
        ax.scatter(y, f, s=9, alpha=0.55, label=f"{s['label']}: MAE {_fmt(s.get('mae'))}")
        lo, hi = min(lo, y.min(), f.min()), max(hi, y.max(), f.max())
    ax.plot([lo, hi], [lo, hi], ls=":", c="grey")
    ax.set(xlabel=f"true {quantity} (label units)", ylabel=f"predicted {quantity} (label units)", title=title)
    ax.legend(fontsize=7.5)
    ax.grid(alpha=0.3)
    return to_png(fig)


def learning_curve_figure(log, x: str, metrics: Sequence[str], by: str | None, colour: str | None = None) -> bytes:
    """One panel per logged metric against ``x``; one line per ``by`` group (e.g. run_id), and, with
    ``colour`` (e.g. strategy), one colour and legend entry per value of that column instead of per line."""
    n = len(metrics)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    groups = list(log.groupby(by, sort=True)) if by else [("", log)]
    # one colour per strategy that has a curve (a linear probe fitted on cached features logs none)
    hues = sorted(log.dropna(subset=[m for m in metrics if m in log], how="all")[colour].astype(str).unique()) \
        if colour else []
    palette = list(colormap("tab20" if len(hues) > 10 else "tab10").colors)
    for ax, name in zip(axes.ravel(), metrics):
        labelled: set[str] = set()
        for i, (g, rows_) in enumerate(groups):
            d = rows_[[x, name]].dropna()
            if not len(d):
                continue
            style = {"lw": 1.4, "marker": "." if len(d) < 30 else None}
            if colour:
                hue = str(rows_[colour].iloc[0])
                style.update(lw=1.0, alpha=0.7, color=palette[hues.index(hue) % len(palette)],
                             label=hue if hue not in labelled else None)
                labelled.add(hue)
            elif by:
                style["label"] = str(g)
            # epochs are logged from 0 and printed from 1 (medtl train's "best epoch 3"): drawn from 1
            ax.plot(d[x] + 1 if x == "epoch" else d[x], d[name], **style)
        ax.set(xlabel="epoch (from 1)" if x == "epoch" else x, title=name)
        if x == "epoch":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if (colour and hues) or (by and len(groups) > 1):
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def embedding_figure(xy: np.ndarray, domains: Sequence[str], title: str,
                     axis_labels: tuple[str, str] = ("component 1", "component 2")) -> bytes:
    """2D embedding of features, coloured by domain; ``axis_labels`` name its axes (PCA: the variance each
    component explains)."""
    fig, ax = subplots(figsize=(5.2, 4.6))
    domains = np.asarray([str(d) for d in domains])
    for d in sorted(set(domains)):
        m = domains == d
        ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.6, label=f"{d} (n={int(m.sum())})")
    ax.set(title=title, xticks=[], yticks=[], xlabel=axis_labels[0], ylabel=axis_labels[1])
    ax.legend(fontsize=8, markerscale=2)
    return to_png(fig)


def strategy_interval_figure(rows: Sequence[dict], metric: str, title: str, reference: float | None = None) -> bytes:
    """Seed-mean ``metric`` with its interval per strategy, one marker per label fraction (a forest plot).

    ``rows``: dicts with ``strategy``, ``label_fraction``, ``value``, ``ci_low``, ``ci_high`` (and ``budget``, the
    labelled count a fraction stands for, to name it by);
    ``reference``: a vertical line (e.g. AUROC 0.5, chance).
    """
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    fractions = sorted({r["label_fraction"] for r in rows}, key=lambda f: (f is None, f or 0))
    fig, ax = subplots(figsize=(6.4, 0.45 * len(strategies) * max(1, len(fractions)) ** 0.5 + 1.4))
    step = 0.6 / max(1, len(fractions))
    for j, frac in enumerate(fractions):
        pts = [r for r in rows if r["label_fraction"] == frac and r["value"] is not None]
        y = [strategies.index(r["strategy"]) + (j - (len(fractions) - 1) / 2) * step for r in pts]
        x = [r["value"] for r in pts]
        lo = [r["value"] - r["ci_low"] if r.get("ci_low") is not None else 0 for r in pts]
        hi = [r["ci_high"] - r["value"] if r.get("ci_high") is not None else 0 for r in pts]
        budget = next((r.get("budget") for r in rows if r["label_fraction"] == frac and r.get("budget")), None)
        label = (f"{budget} labelled" if budget else f"label fraction {frac:g}" if isinstance(frac, (int, float))
                 else "all labels")
        ax.errorbar(x, y, xerr=[lo, hi], fmt="o", ms=4, capsize=2, lw=1.2, label=label)
    if reference is not None:
        ax.axvline(reference, color="grey", ls=":", lw=1)
    ax.set_yticks(range(len(strategies)), strategies)
    ax.invert_yaxis()
    ax.set(xlabel=metric, title=title)
    ax.grid(axis="x", alpha=0.3)
    if len(fractions) > 1:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return to_png(fig)

