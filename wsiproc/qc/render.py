"""Pictures and HTML of QC: PNG data URIs, histograms, colour bar, and the ``qc.html`` page.

Kept apart from :mod:`.collect` so that measuring never depends on drawing; every image is
inlined as a base64 PNG, so each page is one file that can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import io
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_write
from ..maskfile import ink_overlay
from . import metrics
from .collect import DISPLAY_MAX_PX, SlideQC, colormap

HISTOGRAM_MAX_OUTPUTS = 12
"""Outputs beyond this many get statistics but no histogram image."""


def png_data_uri(image: np.ndarray | Image.Image, max_px: int = DISPLAY_MAX_PX) -> str:
    """An image as a ``data:image/png;base64,`` URI, shrunk to ``max_px`` on its longest side."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8) * (255 if image.dtype == bool else 1))
    image = image.copy()
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_png(values: np.ndarray, bins: int = 32) -> Image.Image:
    """A small bar chart of :func:`~wsiproc.qc.metrics.histogram` with edge and peak labels."""
    counts, edges = metrics.histogram(values, bins=bins)
    width, height, pad = 360, 170, 22
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    peak = max(int(counts.max(initial=0)), 1)
    bar_w = plot_w / bins
    for i, n in enumerate(counts):
        top = height - pad - plot_h * n / peak
        x0 = pad + i * bar_w
        draw.rectangle([x0, top, x0 + bar_w - 1, height - pad], fill=(49, 104, 142))
    draw.line([pad, height - pad, width - pad, height - pad], fill="black")
    draw.text((pad, height - pad + 4), f"{edges[0]:.4g}", fill="black")
    right = f"{edges[-1]:.4g}"
    draw.text((width - pad - draw.textlength(right), height - pad + 4), right, fill="black")
    draw.text((pad, 4), f"max count {int(counts.max(initial=0))}", fill="black")
    return image


def colorbar_png(width: int = 256, height: int = 12) -> Image.Image:
    """The overlay's colormap as a horizontal gradient, low values on the left."""
    row = colormap(np.linspace(0.0, 1.0, width))
    return Image.fromarray(np.repeat(row[None, :, :], height, axis=0))


def _fmt(value: Any) -> str:
    """A value as short display text; missing and NaN become an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "–"
    return str(value)


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.6em 1em;font-weight:bold;border-radius:4px;margin:.5em 0;color:#fff}
.ok{background:#2e7d32}.bad{background:#c62828}
.flag{display:inline-block;background:#c62828;color:#fff;border-radius:3px;padding:0 .4em;
margin:0 .2em 0 0;font-size:.85em}
.okflag{color:#2e7d32;font-weight:bold}
tr.failed td{background:#fdecea}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{border:1px solid #ccc}
img.slide{width:480px;max-width:100%}
figcaption{font-size:.85em;color:#555}
"""

_META_ROWS = (
    ("Slide", "slide"), ("Patient", "patient"), ("Slide ID", "slide_id"),
    ("Vendor", "vendor"), ("Objective power", "objective_power"), ("Model", "model"),
    ("Precision", "precision"),
    ("Level", "level"), ("Level downsample", "level_downsample"), ("Scale (l0 px / proc px)",
    "scale"), ("Processing mpp (µm/px)", "proc_mpp"), ("mpp source", "mpp_source"),
    ("Windows total", "windows_total"), ("Windows processed", "windows_processed"),
    ("Windows skipped", "windows_skipped"), ("Tissue %", "tissue_percent"),
    ("Blur score", "blur_score"), ("Pen fraction", "pen_fraction"),
)  # fmt: skip


def html_page(title: str, body: str, *, head: str = "") -> str:
    """A complete HTML page with the QC style; ``head`` is extra markup for its ``<head>``."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n{head}</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = ()
) -> str:
    """An HTML table from already-escaped cell HTML; ``row_classes`` style rows (e.g. failed)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    classes = [*row_classes, *[""] * (len(rows) - len(row_classes))]
    body = "".join(
        (f'<tr class="{css}">' if css else "<tr>") + "".join(cells) + "</tr>\n"
        for cells, css in zip(rows, classes, strict=True)
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def html_cell(value: Any) -> str:
    """One escaped table cell, numbers right-aligned."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td{' class=num' if numeric else ''}>{html.escape(_fmt(value))}</td>"


def _figure(uri: str, caption: str, css_class: str = "chart") -> str:
    """An inline image with an escaped caption."""
    alt = html.escape(caption)
    img = f'<img class="{css_class}" src="{uri}" alt="{alt}">'
    return f"<figure>{img}<figcaption>{alt}</figcaption></figure>\n"


VIEWER_LINK_CLASS = "wsiproc-view"
"""Class of the links to the viewer's slide pages: hidden in the file, shown by ``wsiproc
view`` when it serves the page (the links lead nowhere from disk)."""

VIEWER_HINT_CLASS = "wsiproc-view-hint"
"""Class of the paragraph giving the command that opens the viewer (hidden when served)."""


def viewer_page_path(slide_id: str) -> str:
    """The path at which ``wsiproc view`` serves a slide's page; defined here, before the
    viewer, because the reports link to it and the viewer only reads them."""
    return f"/slide/{quote(slide_id, safe='')}"


def viewer_hint_html(results: str | Path | None) -> str:
    """A paragraph with the exact command that serves ``results`` in the viewer."""
    target = shlex.quote(str(Path(results).resolve())) if results is not None else "RESULTS_DIR"
    return (
        f'<p class="{VIEWER_HINT_CLASS}">Pan and zoom the slide with its heatmap: run '
        f"<code>wsiproc view {html.escape(target)}</code> and open the address it prints.</p>"
    )


def viewer_link_html(slide_id: str, text: str) -> str:
    """A link to the slide's viewer page, hidden until ``wsiproc view`` serves this page."""
    href = html.escape(viewer_page_path(slide_id), quote=True)
    return f'<a class="{VIEWER_LINK_CLASS}" href="{href}" hidden>{html.escape(text)}</a>'


def render_slide_html(qc: SlideQC, *, results: str | Path | None = None) -> str:
    """The self-contained ``qc.html`` page of one slide (no scripts, no external resources).

    ``results`` is the workflow's results folder, named in the viewer command.
    """
    rec = qc.record
    name = f"{_fmt(rec.get('patient'))} / {_fmt(rec.get('slide_id'))}"
    parts = [f"<h1>QC: {html.escape(name)}</h1>"]
    if rec.get("slide_id"):
        parts.append(f"<p>{viewer_link_html(str(rec['slide_id']), 'Open in the viewer')}</p>")
    parts.append(viewer_hint_html(results))
    if rec["flags"]:
        parts.append(f'<div class="banner bad">{html.escape(", ".join(rec["flags"]))}</div>')
    else:
        parts.append('<div class="banner ok">OK</div>')
    parts += [f"<p>{html.escape('warning: ' + w)}</p>" for w in rec.get("warnings", [])]
    meta_rows = [[f"<th>{html.escape(k)}</th>", html_cell(rec.get(key))] for k, key in _META_ROWS]
    parts += ["<h2>Slide</h2>", html_table(["Field", "Value"], meta_rows), "<h2>Images</h2>"]
    if qc.thumbnail is not None:
        parts.append(_figure(png_data_uri(qc.thumbnail), "Thumbnail", "slide"))
    if qc.mask is not None:
        ink = qc.ink if qc.ink is not None else np.zeros_like(qc.mask)
        labels = np.zeros((*qc.mask.shape, 3), dtype=np.uint8)
        labels[qc.mask] = 255
        labels[ink] = (255, 0, 255)
        caption = f"Tissue mask (white; marker ink in magenta: {100 * ink.mean():.2g} %)"
        parts.append(_figure(png_data_uri(labels), caption, "slide"))
        if qc.thumbnail is not None and ink.any():
            overlay = ink_overlay(qc.thumbnail, qc.mask, ink)
            parts.append(_figure(png_data_uri(overlay), "Ink left out of the tissue", "slide"))
    first = next(iter(rec["outputs"]), None)
    if qc.overlay is not None and first is not None:
        lo, hi = qc.value_range
        parts.append(
            _figure(png_data_uri(qc.overlay), f"Windows: {first} (mean per pixel)", "slide")
        )
        parts.append(
            f'<p>{html.escape(_fmt(lo))} <img src="{png_data_uri(colorbar_png())}" '
            f'alt="colour scale"> {html.escape(_fmt(hi))}</p>'
        )
    parts.append("<h2>Outputs</h2>")
    for i, (out_name, column) in enumerate(qc.values.items()):
        if i == HISTOGRAM_MAX_OUTPUTS:
            parts.append(f"<p>Histograms of {len(qc.values) - i} more outputs omitted.</p>")
            break
        parts.append(_figure(png_data_uri(histogram_png(column)), f"Histogram: {out_name}"))
    stat_rows = [
        [f"<th>{html.escape(n)}</th>", *(html_cell(s[k]) for k in metrics.SUMMARY_KEYS)]
        for n, s in rec["outputs"].items()
    ]
    parts.append(html_table(["Output", *metrics.SUMMARY_KEYS], stat_rows))
    runtime = [
        ["<th>Runtime (s)</th>", html_cell(rec.get("runtime_s"))],
        ["<th>Windows / s</th>", html_cell(rec.get("windows_per_s"))],
        ["<th>Peak RSS (MB)</th>", html_cell(rec.get("max_rss_mb"))],
        ["<th>Source</th>", html_cell(rec.get("runtime_source"))],
    ]
    parts += ["<h2>Runtime</h2>", html_table(["Field", "Value"], runtime)]
    thresholds = [
        [f"<th>{html.escape(k)}</th>", html_cell(v)] for k, v in rec["thresholds"].items()
    ]
    parts += ["<h2>Thresholds</h2>", html_table(["Flag threshold", "Value"], thresholds)]
    return html_page(f"QC {name}", "\n".join(parts))


def write_qc_html(qc: SlideQC, path: str | Path) -> None:
    """Write ``qc.html`` atomically; in the workflow's layout
    (``{results}/{patient}/{slide}/qc.html``) its viewer command names ``{results}``."""
    folder = Path(path).resolve().parent
    rec = qc.record
    in_layout = (folder.name, folder.parent.name) == (rec.get("slide_id"), rec.get("patient"))
    page = render_slide_html(qc, results=folder.parents[1] if in_layout else None)
    with atomic_write(path) as fh:
        fh.write(page)
