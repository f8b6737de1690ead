"""The cohort QC report of ``wsiproc report``: ``report.html`` and ``summary.tsv``.

Kept apart from the per-slide modules because it only renders: every slide of the sample
sheet gets one line, its QC numbers from a finished ``qc.json`` and its status (failed stage,
error, log) from :mod:`wsiproc.cohort`, which decides what happened to it. Unlike ``qc.html``,
the page links each slide's ``thumbnail.png`` instead of embedding it: embedded at 160 px, a
demo slide's took about 30 kB, some 300 MB at 10,000 slides; linked and lazily loaded, 10,000
slides make a page of about 6 MB.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import __version__
from ..atomic import atomic_write
from ..cohort import FAILED, FLAGGED, NOT_RUN, OK, CohortStatus, PatientStatus
from ..webpage import render_page
from . import metrics
from .collect import load_qc
from .inputs import resolve_recorded
from .render import ViewerLinks
from .report_stages import (
    StageColumns,
    attention_thumbnail,
    class_values,
    record_values,
    stage_columns,
)
from .sortable import Column, SortableTable

QC_COLUMNS = (
    "level", "proc_mpp", "mpp_source", "windows_total", "windows_processed", "windows_skipped",
    "tissue_percent", "blur_score", "pen_fraction", "runtime_s", "windows_per_s", "max_rss_mb",
    "flags",
)  # fmt: skip
"""Columns read from a slide's ``qc.json``; ``NA`` for slides without a current one."""

SUMMARY_COLUMNS = (
    "patient", "slide_id", "status", *QC_COLUMNS, "qc_html", "failed_stage", "error", "log",
)  # fmt: skip
"""Columns of ``summary.tsv`` and of the cohort table, in order."""

COHORT_THUMB_PX = 160
"""Longer side of the box the cohort report shows each linked thumbnail in (CSS pixels)."""

STATUSES = (OK, FLAGGED, FAILED, NOT_RUN)
"""The choices of the slide table's status filter, in the order of the counts line."""

PATIENT_STATUSES = (OK, FAILED, NOT_RUN)
"""A patient's statuses (see :func:`wsiproc.cohort.patient_status`)."""


def qc_html_path(record: dict[str, Any], qc_json: str | Path) -> Path:
    """Where a slide's ``qc.html`` is: beside its ``qc.json`` (the workflow's layout, right
    also after the results folder was moved or copied), else where ``qc.json`` recorded it."""
    beside = Path(qc_json).with_suffix(".html")
    recorded = record.get("html")
    if beside.exists() or not recorded:
        return beside
    return Path(recorded)


def thumbnail_path(record: dict[str, Any], qc_json: str | Path) -> Path | None:
    """A slide's ``thumbnail.png`` if it exists: beside its ``qc.json`` (the workflow's layout,
    right also after the results folder was moved), else where ``qc.json`` recorded it."""
    beside = Path(qc_json).with_name("thumbnail.png")
    if beside.is_file():
        return beside
    recorded = resolve_recorded(record.get("thumbnail"), Path(qc_json).parent)
    return recorded if recorded is not None and recorded.is_file() else None


def summary_columns(stage: StageColumns) -> tuple[str, ...]:
    """:data:`SUMMARY_COLUMNS` with the optional stages' columns after the QC numbers."""
    at = SUMMARY_COLUMNS.index("qc_html")
    return (*SUMMARY_COLUMNS[:at], *stage.keys, *SUMMARY_COLUMNS[at:])


def summary_rows(cohort: CohortStatus, report_dir: str | Path) -> list[dict[str, Any]]:
    """One :func:`summary_columns` dict per slide of the sheet, sorted by patient then slide ID.

    QC columns come from ``qc.json`` for ``ok`` and ``flagged`` slides only (a failed slide's
    ``qc.json`` may be left from an earlier run), and so do the features and prediction
    columns of a run with those stages; ``qc_html`` is the link to the slide's ``qc.html``
    relative to ``report_dir``. ``thumbnail`` and ``attention_thumbnail`` (not TSV columns)
    are the slide's ``thumbnail.png`` and ``attention.png``, or None.
    """
    rows = []
    for slide in cohort.slides:
        row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
        row["thumbnail"] = row["attention_thumbnail"] = row["_prediction"] = None
        if slide.qc_json is not None:
            record = load_qc(slide.qc_json)
            row.update({key: record.get(key) for key in QC_COLUMNS})
            if cohort.features or cohort.slide_model:
                row.update(record_values(record))
            if cohort.slide_model:
                row["attention_thumbnail"] = attention_thumbnail(slide.qc_json)
            row["flags"] = list(record.get("flags") or [])
            link = qc_html_path(record, slide.qc_json)
            row["qc_html"] = os.path.relpath(link, start=report_dir)
            row["thumbnail"] = thumbnail_path(record, slide.qc_json)
        row.update(patient=slide.patient, slide_id=slide.slide, status=slide.status)
        row.update(failed_stage=slide.stage, error=slide.error)
        row["log"] = None if slide.log is None else str(slide.log)
        rows.append(row)
    stage = report_stage_columns(cohort, rows)
    for row in rows:
        for key in stage.keys:
            row.setdefault(key, None)
        class_values(row, stage)
    rows.sort(key=lambda r: (r["patient"], r["slide_id"]))
    return rows


def report_stage_columns(cohort: CohortStatus, rows: Sequence[dict[str, Any]]) -> StageColumns:
    """The columns the run's optional stages add to the report and ``summary.tsv``."""
    return stage_columns(rows, features=cohort.features, slide_model=cohort.slide_model)


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's header, or None if it is not a readable PNG.

    Reads 24 bytes rather than opening the image, so 10,000 thumbnails cost well under a
    second; the sizes let the page reserve each lazily loaded image's box, so rows keep their
    height while the browser fetches only the thumbnails in view.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     Image.new("RGB", (30, 20)).save(f"{tmp}/t.png")
    ...     png_size(Path(tmp, "t.png"))
    (30, 20)
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return (width, height) if width and height else None


def href(path: str | os.PathLike[str], report_dir: str | Path) -> str:
    """``path`` as a percent-encoded URL relative to the report's folder (the template escapes it).

    Examples
    --------
    >>> href("/r/P 1/S#1/thumbnail.png", "/r")
    'P%201/S%231/thumbnail.png'
    """
    relative = Path(os.path.relpath(path, start=report_dir)).as_posix()
    return quote(relative)


def _tsv_value(value: Any) -> str:
    """A TSV field: ``NA`` for missing, ``%.6g`` floats, comma-joined flags (``OK`` if none)."""
    if isinstance(value, list):
        return ",".join(value) or "OK"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NA"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")


FAILED_COLUMNS = (
    Column("Patient", search=True), Column("Slide", search=True), Column("Stage"),
    Column("Error"), Column("Log"),
)  # fmt: skip
"""The failed slides' table (all slides may have failed, so it is paged too)."""

PATIENT_COLUMNS = (
    Column("Patient", search=True), Column("Slides", "num"), Column("Status"),
    Column("Patient CSV"),
)  # fmt: skip
"""The patients' table: each patient's CSV, or why there is none."""

SLIDE_COLUMNS = (
    Column("Thumbnail", None), Column("Patient", search=True), Column("Slide", search=True),
    Column("Status"), Column("Level", "num"), Column("mpp", "num"),
    Column("Windows processed", "num"), Column("Tissue %", "num"), Column("Blur", "num"),
    Column("Pen", "num"), Column("Runtime (s)", "num"), Column("Windows/s", "num"),
    Column("Flags"), Column("QC", None),
)  # fmt: skip
"""The slide table's columns; the filter's text box searches patient and slide ids."""


def _thumbnail(path: Path, report_dir: str | Path) -> dict[str, Any]:
    """The linked thumbnail's URL and its size scaled into the report's box (no size if the
    PNG header cannot be read)."""
    size = png_size(path)
    thumb: dict[str, Any] = {"src": href(path, report_dir), "width": None, "height": None}
    if size is not None:
        scale = min(1.0, COHORT_THUMB_PX / max(size))
        thumb["width"] = max(1, round(size[0] * scale))
        thumb["height"] = max(1, round(size[1] * scale))
    return thumb


def _slide_lines(rows: Sequence[dict[str, Any]], report_dir: str | Path) -> list[dict[str, Any]]:
    """Each summary row with what its line links to: ``qc.html``, thumbnail, log."""
    lines = []
    for r in rows:
        qc_href = None if r["qc_html"] is None else quote(Path(r["qc_html"]).as_posix())
        thumb, attention = r["thumbnail"], r["attention_thumbnail"]
        lines.append(
            {
                **r,
                "qc_href": qc_href,
                "thumb": _thumbnail(thumb, report_dir) if thumb and qc_href else None,
                "attention": _thumbnail(attention, report_dir) if attention and qc_href else None,
                "log_href": None if r["log"] is None else href(r["log"], report_dir),
                "status_text": r["status"]
                if r["failed_stage"] is None
                else f"failed ({r['failed_stage']})",
            }
        )
    return lines


def _patient_lines(
    patients: Sequence[PatientStatus], report_dir: str | Path
) -> list[dict[str, Any]]:
    """One line per patient: its CSV's link, or the reason it has none."""
    return [
        {
            "patient": p.patient,
            "slides": p.slides,
            "status": p.status,
            "csv_href": None if p.csv is None else href(p.csv, report_dir),
            "csv_name": None if p.csv is None else p.csv.name,
            "reason": p.reason,
        }
        for p in patients
    ]


def render_cohort_html(
    cohort: CohortStatus, rows: Sequence[dict[str, Any]], report_dir: str | Path
) -> str:
    """The cohort ``report.html``: counts, run facts, failed slides, patients, flags, one line
    per slide. The viewer command names the run's results folder, wherever the report is."""
    lines = _slide_lines(rows, report_dir)
    stage = report_stage_columns(cohort, rows)
    columns = (
        *SLIDE_COLUMNS[:1], *stage.thumb_columns, *SLIDE_COLUMNS[1:-2], *stage.columns,
        *SLIDE_COLUMNS[-2:],
    )  # fmt: skip
    failed = [r for r in lines if r["status"] == FAILED]
    filter_ids = "Filter by slide or patient id"
    run_facts = [
        ("Results", str(cohort.layout.results.resolve())),
        ("Logs", str(cohort.layout.logs.resolve())),
        ("wsiproc", __version__),
    ]
    return render_page(
        "report.html",
        title="wsiproc QC report",
        counts=cohort.counts_text(),
        viewer=ViewerLinks(cohort.layout.results),
        run_facts=run_facts,
        failed=SortableTable("failed", FAILED_COLUMNS, failed, filter_ids),
        patients=SortableTable(
            "patients",
            PATIENT_COLUMNS,
            _patient_lines(cohort.patients, report_dir),
            "Filter by patient id",
            PATIENT_STATUSES,
        ),
        flag_counts=[(f, sum(f in (r["flags"] or ()) for r in rows)) for f in metrics.FLAGS],
        slides=SortableTable("slides", columns, lines, filter_ids, STATUSES),
        stage=stage,
    )


def write_cohort_report(cohort: CohortStatus, *, out_html: str | Path, out_tsv: str | Path) -> int:
    """Write ``report.html`` and ``summary.tsv`` (atomically) for every slide; return the count."""
    report_dir = Path(out_html).parent
    rows = summary_rows(cohort, report_dir)
    page = render_cohort_html(cohort, rows, report_dir)
    keys = summary_columns(report_stage_columns(cohort, rows))
    tsv = "\t".join(keys) + "\n"
    tsv += "".join("\t".join(_tsv_value(r[k]) for k in keys) + "\n" for r in rows)
    with atomic_write(out_html) as fh:
        fh.write(page)
    with atomic_write(out_tsv) as fh:
        fh.write(tsv)
    return len(rows)
