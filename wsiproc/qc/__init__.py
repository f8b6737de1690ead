"""Quality control: per-slide metrics and flags (``qc.json``/``qc.html``) and the cohort report."""

from __future__ import annotations

from .collect import QC_FORMAT, SlideQC, Thresholds, build_qc, write_qc_json
from .metrics import (
    BLUR_THRESHOLD,
    FLAGS,
    MIN_TISSUE_PERCENT,
    PEN_THRESHOLD,
    blur_score,
    flags,
    histogram,
    output_summary,
    pen_fraction,
    tissue_percent,
    window_mean_raster,
)
from .render import write_qc_html
from .report import SUMMARY_COLUMNS, write_cohort_report

__all__ = [
    "BLUR_THRESHOLD",
    "FLAGS",
    "MIN_TISSUE_PERCENT",
    "PEN_THRESHOLD",
    "QC_FORMAT",
    "SUMMARY_COLUMNS",
    "SlideQC",
    "Thresholds",
    "blur_score",
    "build_qc",
    "flags",
    "histogram",
    "output_summary",
    "pen_fraction",
    "tissue_percent",
    "window_mean_raster",
    "write_cohort_report",
    "write_qc_html",
    "write_qc_json",
]
