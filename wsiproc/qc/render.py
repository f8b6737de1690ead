"""The ``qc.html`` page of one slide: its QC record and pictures handed to the QC template.

Kept apart from :mod:`.collect` so that measuring never depends on drawing. Images are inlined
(slide pictures as PNG, charts from :mod:`wsiproc.plots` as SVG), so each page is one file that
can be mailed or archived as is; the markup is ``wsiproc/templates/qc.html``.
"""

from __future__ import annotations

import base64
import io
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..maskfile import ink_overlay
from ..webpage import format_value, render_page
from . import metrics
from .collect import DISPLAY_MAX_PX, SlideQC

HISTOGRAM_MAX_OUTPUTS = 12
"""Outputs beyond this many get statistics but no histogram and no place in the distributions
figure."""

SLIDE_FACTS = (
    ("Slide", "slide"), ("Patient", "patient"), ("Slide ID", "slide_id"),
    ("Vendor", "vendor"), ("Objective power", "objective_power"), ("Model", "model"),
    ("Precision", "precision"), ("Compiled", "compiled"),
    ("Level", "level"), ("Level downsample", "level_downsample"), ("Scale (l0 px / proc px)",
    "scale"), ("Processing mpp (µm/px)", "proc_mpp"), ("mpp source", "mpp_source"),
    ("Windows total", "windows_total"), ("Windows processed", "windows_processed"),
    ("Windows skipped", "windows_skipped"), ("Tissue %", "tissue_percent"),
    ("Blur score", "blur_score"), ("Pen fraction", "pen_fraction"),
)  # fmt: skip
"""(label, ``qc.json`` key) of the page's Slide table: one line here is one row there."""

RUNTIME_FACTS = (
    ("Runtime (s)", "runtime_s"), ("Windows / s", "windows_per_s"),
    ("Peak RSS (MB)", "max_rss_mb"), ("Source", "runtime_source"),
)  # fmt: skip
"""(label, ``qc.json`` key) of the page's Runtime table."""

FEATURES_FACTS = (
    ("Encoder", "encoder"), ("Patches embedded", "patches"), ("Dimension", "dim"),
    ("Precision", "precision"), ("Device", "device"), ("Runtime (s)", "runtime_s"),
    ("Patches / s", "patches_per_s"),
)  # fmt: skip
"""(label, key of ``qc.json``'s ``features``) of the page's Features table."""

VIEWER_LINK_CLASS = "wsiproc-view"
"""Class of the links to the viewer's slide pages: hidden in the file, shown by ``wsiproc
view`` when it serves the page (the links lead nowhere from disk)."""

VIEWER_HINT_CLASS = "wsiproc-view-hint"
"""Class of the paragraph giving the command that opens the viewer (hidden when served)."""


def viewer_page_path(slide_id: str) -> str:
    """The path at which ``wsiproc view`` serves a slide's page; defined here, before the
    viewer, because the reports link to it and the viewer only reads them."""
    return f"/slide/{quote(slide_id, safe='')}"


@dataclass(frozen=True)
class ViewerLinks:
    """What the QC page and the report say about the viewer: the command that serves
    ``results`` (the workflow's results folder, None if unknown) and where slide pages are."""

    results: Path | None
    link_class: str = VIEWER_LINK_CLASS
    hint_class: str = VIEWER_HINT_CLASS

    @property
    def command(self) -> str:
        """``wsiproc view /abs/results``, shell-quoted (``RESULTS_DIR`` if unknown)."""
        if self.results is None:
            return "wsiproc view RESULTS_DIR"
        return f"wsiproc view {shlex.quote(str(Path(self.results).resolve()))}"

    @staticmethod
    def page(slide_id: str) -> str:
        """The viewer's URL path of a slide's page."""
        return viewer_page_path(slide_id)


@dataclass(frozen=True)
class Picture:
    """An inlined image and its caption (also its alt text)."""

    src: str
    caption: str


@dataclass(frozen=True)
class FactTable:
    """A titled table of (label, value) rows; the page adds it as is."""

    title: str
    rows: list[tuple[str, Any]]
    key_header: str = "Field"


def png_data_uri(image: np.ndarray | Image.Image, max_px: int = DISPLAY_MAX_PX) -> str:
    """An image as a ``data:image/png;base64,`` URI, shrunk to ``max_px`` on its longest side."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8) * (255 if image.dtype == bool else 1))
    image = image.copy()
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _images(qc: SlideQC) -> list[Picture]:
    """Thumbnail, tissue mask (ink in magenta), ink overlay and the heatmap overlay."""
    pictures = []
    if qc.thumbnail is not None:
        pictures.append(Picture(png_data_uri(qc.thumbnail), "Thumbnail"))
    if qc.mask is not None:
        ink = qc.ink if qc.ink is not None else np.zeros_like(qc.mask)
        labels = np.zeros((*qc.mask.shape, 3), dtype=np.uint8)
        labels[qc.mask] = 255
        labels[ink] = (255, 0, 255)
        caption = f"Tissue mask (white; marker ink in magenta: {100 * ink.mean():.2g} %)"
        pictures.append(Picture(png_data_uri(labels), caption))
        if qc.thumbnail is not None and ink.any():
            overlay = ink_overlay(qc.thumbnail, qc.mask, ink)
            pictures.append(Picture(png_data_uri(overlay), "Ink left out of the tissue"))
    first = next(iter(qc.record["outputs"]), None)
    if qc.overlay is not None and first is not None:
        caption = f"Windows: {first} (mean per pixel)"
        pictures.append(Picture(png_data_uri(qc.overlay), caption))
    return pictures


def _charts(qc: SlideQC) -> dict[str, Any]:
    """The SVG charts: overlay legend, output distributions and one histogram per output."""
    from .. import plots  # here: only the QC stage draws, and matplotlib is slow to import

    first = next(iter(qc.record["outputs"]), None)
    legend = None
    if qc.overlay is not None and first is not None:
        lo, hi = qc.value_range
        figure = plots.colorbar_figure(lo, hi, label=f"{first} (mean per window)")
        legend = Picture(plots.svg_data_uri(figure), "Colour scale of the windows overlay")
    shown = dict(list(qc.values.items())[:HISTOGRAM_MAX_OUTPUTS])
    distributions = None
    if shown:
        figure = plots.distributions_figure(shown)
        caption = "Output distributions over the slide's windows"
        distributions = Picture(plots.svg_data_uri(figure), caption)
    histograms = [
        Picture(plots.svg_data_uri(plots.histogram_figure(v, name=n)), f"Histogram: {n}")
        for n, v in shown.items()
    ]
    omitted = len(qc.values) - len(shown)
    return {
        "legend": legend,
        "distributions": distributions,
        "histograms": histograms,
        "histograms_omitted": omitted,
    }


def stage_tables(rec: dict[str, Any]) -> list[FactTable]:
    """The Features and Slide prediction tables, for the stages that ran (``qc.json``'s
    ``features`` and ``prediction``); the prediction's flag is the attention-on-background
    check of ``slide.json``."""
    tables = []
    features = rec.get("features")
    if features:
        rows = [(label, features.get(key)) for label, key in FEATURES_FACTS]
        tables.append(FactTable("Features", rows))
    pred = rec.get("prediction")
    if pred:
        rows = [("Model", pred["model"]), ("Predicted class", pred["predicted_class"])]
        prefix = "P" if pred["task"] == "classification" else "Value"
        values = pred["values"] or [None] * len(pred["classes"])
        rows += [(f"{prefix}({c})", v) for c, v in zip(pred["classes"], values, strict=True)]
        rows.append(("Patches", pred["n_patches"]))
        off, limit = pred["attention_off_tissue"], pred["attention_threshold"]
        verdict = "flagged" if "attention_off_tissue" in pred["flags"] else "ok"
        rows.append(("Attention on background (share)", off))
        rows.append(("Attention on background", f"{verdict} (threshold {format_value(limit)})"))
        tables.append(FactTable("Slide prediction", rows))
    return tables


def render_slide_html(qc: SlideQC, *, results: str | Path | None = None) -> str:
    """The self-contained ``qc.html`` page of one slide (no scripts, no external resources).

    ``results`` is the workflow's results folder, named in the viewer command.
    """
    rec = qc.record
    slide_facts = [(label, rec.get(key)) for label, key in SLIDE_FACTS]
    fact_tables = [
        *stage_tables(rec),
        FactTable("Runtime", [(label, rec.get(key)) for label, key in RUNTIME_FACTS]),
        FactTable("Thresholds", list(rec["thresholds"].items()), "Flag threshold"),
    ]
    name = f"{format_value(rec.get('patient'))} / {format_value(rec.get('slide_id'))}"
    return render_page(
        "qc.html",
        title=f"QC {name}",
        name=name,
        slide_id=rec.get("slide_id"),
        viewer=ViewerLinks(None if results is None else Path(results)),
        flags=rec["flags"],
        warnings=rec.get("warnings", []),
        slide_facts=slide_facts,
        images=_images(qc),
        outputs=rec["outputs"],
        summary_keys=metrics.SUMMARY_KEYS,
        fact_tables=fact_tables,
        **_charts(qc),
    )


def write_qc_html(qc: SlideQC, path: str | Path) -> None:
    """Write ``qc.html`` atomically; in the workflow's layout
    (``{results}/{patient}/{slide}/qc.html``) its viewer command names ``{results}``."""
    folder = Path(path).resolve().parent
    rec = qc.record
    in_layout = (folder.name, folder.parent.name) == (rec.get("slide_id"), rec.get("patient"))
    page = render_slide_html(qc, results=folder.parents[1] if in_layout else None)
    with atomic_write(path) as fh:
        fh.write(page)
