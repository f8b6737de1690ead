"""The cohort QC report of ``wsiproc report``: ``report.html`` and ``summary.tsv``.

Kept apart from the per-slide modules because it only renders: every slide of the sample
sheet gets one line, its QC numbers from a finished ``qc.json`` and its status (failed stage,
error, log) from :mod:`wsiproc.cohort`, which decides what happened to it. Unlike ``qc.html``,
the page links each slide's ``thumbnail.png`` instead of embedding it: embedded at 160 px, a
demo slide's took about 30 kB, some 300 MB at 10,000 slides; linked and lazily loaded, 10,000
slides make a page of about 6 MB.
"""

from __future__ import annotations

import html
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..atomic import atomic_write
from ..cohort import FAILED, FLAGGED, NOT_RUN, OK, CohortStatus, PatientStatus
from . import metrics, sortable
from .collect import load_qc
from .inputs import resolve_recorded
from .render import html_cell, html_page, html_table, viewer_hint_html, viewer_link_html
from .sortable import Column

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


def summary_rows(cohort: CohortStatus, report_dir: str | Path) -> list[dict[str, Any]]:
    """One :data:`SUMMARY_COLUMNS` dict per slide of the sheet, sorted by patient then slide ID.

    QC columns come from ``qc.json`` for ``ok`` and ``flagged`` slides only (a failed slide's
    ``qc.json`` may be left from an earlier run); ``qc_html`` is the link to the slide's
    ``qc.html`` relative to ``report_dir``. ``thumbnail`` (not a TSV column) is the slide's
    ``thumbnail.png``, or None.
    """
    rows = []
    for slide in cohort.slides:
        row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
        row["thumbnail"] = None
        if slide.qc_json is not None:
            record = load_qc(slide.qc_json)
            row.update({key: record.get(key) for key in QC_COLUMNS})
            row["flags"] = list(record.get("flags") or [])
            link = qc_html_path(record, slide.qc_json)
            row["qc_html"] = os.path.relpath(link, start=report_dir)
            row["thumbnail"] = thumbnail_path(record, slide.qc_json)
        row.update(patient=slide.patient, slide_id=slide.slide, status=slide.status)
        row.update(failed_stage=slide.stage, error=slide.error)
        row["log"] = None if slide.log is None else str(slide.log)
        rows.append(row)
    rows.sort(key=lambda r: (r["patient"], r["slide_id"]))
    return rows


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
    """``path`` as an escaped, percent-encoded URL relative to the report's folder.

    Examples
    --------
    >>> href("/r/P 1/S#1/thumbnail.png", "/r")
    'P%201/S%231/thumbnail.png'
    """
    relative = Path(os.path.relpath(path, start=report_dir)).as_posix()
    return html.escape(quote(relative), quote=True)


def _thumbnail_html(path: Path, report_dir: str | Path) -> str:
    """A lazily loaded ``<img>`` linking the thumbnail file, sized to fit the report's box."""
    size = png_size(path)
    dims = ""
    if size is not None:
        scale = min(1.0, COHORT_THUMB_PX / max(size))
        dims = (
            f' width="{max(1, round(size[0] * scale))}" height="{max(1, round(size[1] * scale))}"'
        )
    return (
        f'<img class="thumb" loading="lazy" src="{href(path, report_dir)}"{dims} alt="thumbnail">'
    )


def _tsv_value(value: Any) -> str:
    """A TSV field: ``NA`` for missing, ``%.6g`` floats, comma-joined flags (``OK`` if none)."""
    if isinstance(value, list):
        return ",".join(value) or "OK"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NA"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")


def _flags_html(names: Sequence[str] | None) -> str:
    """Flags as red badges, a green OK, or nothing for a slide without QC."""
    if names is None:
        return ""
    if not names:
        return '<span class="okflag">OK</span>'
    return "".join(f'<span class="flag">{html.escape(n)}</span>' for n in names)


def _link(path: str | os.PathLike[str], report_dir: str | Path, text: str) -> str:
    """An escaped link to ``path`` relative to the report, showing ``text``."""
    return f'<a href="{href(path, report_dir)}">{html.escape(text)}</a>'


def _patients_html(patients: Sequence[PatientStatus], report_dir: str | Path) -> str:
    """One line per patient: its CSV, or why there is none; sortable and filterable."""
    lines = []
    for p in patients:
        if p.csv is not None:
            csv_cell = f"<td>{_link(p.csv, report_dir, p.csv.name)}</td>"
        else:
            csv_cell = f"<td>none: {html.escape(p.reason or '')}</td>"
        lines.append(
            [html_cell(p.patient), html_cell(len(p.slides)), html_cell(p.status), csv_cell]
        )
    columns = [Column("Patient", search=True), Column("Slides", "num"), Column("Status")]
    columns.append(Column("Patient CSV"))
    bar = sortable.filter_bar(
        "patients",
        placeholder="Filter by patient id",
        statuses=PATIENT_STATUSES,
    )
    table = sortable.sortable_table(
        "patients",
        columns,
        lines,
        statuses=[p.status for p in patients],
        classes=["failed" if p.status == FAILED else "" for p in patients],
    )
    return bar + table


def _failed_html(rows: Sequence[dict[str, Any]], report_dir: str | Path) -> str:
    """The failed slides with the stage, the error and a link to the log (all slides may have
    failed, so this table is paged too)."""
    lines = [
        [html_cell(r[k]) for k in ("patient", "slide_id", "failed_stage", "error")]
        + [f"<td>{_link(r['log'], report_dir, r['log'])}</td>"]
        for r in rows
    ]
    columns = [Column("Patient", search=True), Column("Slide", search=True), Column("Stage")]
    columns += [Column("Error"), Column("Log")]
    bar = sortable.filter_bar("failed", placeholder="Filter by slide or patient id", statuses=())
    table = sortable.sortable_table(
        "failed", columns, lines, statuses=[FAILED] * len(rows), classes=["failed"] * len(rows)
    )
    return bar + table


SLIDE_COLUMNS = (
    Column("Thumbnail", None), Column("Patient", search=True), Column("Slide", search=True),
    Column("Status"), Column("Level", "num"), Column("mpp", "num"),
    Column("Windows processed", "num"), Column("Tissue %", "num"), Column("Blur", "num"),
    Column("Pen", "num"), Column("Runtime (s)", "num"), Column("Windows/s", "num"),
    Column("Flags"), Column("QC", None),
)  # fmt: skip
"""The slide table's columns; the filter's text box searches patient and slide ids."""


def _slides_html(rows: Sequence[dict[str, Any]], report_dir: str | Path) -> str:
    """One line per slide: thumbnail, QC numbers and flags, or the failure and its log."""
    lines = []
    for r in rows:
        if r["qc_html"] is not None:
            link = html.escape(quote(Path(r["qc_html"]).as_posix()), quote=True)
            thumb = r["thumbnail"]
            image = f'<a href="{link}">{_thumbnail_html(thumb, report_dir)}</a>' if thumb else ""
            view = viewer_link_html(r["slide_id"], "view")
            qc_cell = f'<td><a href="{link}">qc</a> {view}</td>'
        else:
            image = ""
            qc_cell = f"<td>{_link(r['log'], report_dir, 'log')}</td>" if r["log"] else "<td></td>"
        status = r["status"] if r["failed_stage"] is None else f"failed ({r['failed_stage']})"
        cells = [f"<td>{image}</td>", html_cell(r["patient"]), html_cell(r["slide_id"])]
        cells += [html_cell(status), html_cell(r["level"]), html_cell(r["proc_mpp"])]
        cells += [html_cell(r[k]) for k in ("windows_processed", "tissue_percent", "blur_score")]
        cells += [html_cell(r[k]) for k in ("pen_fraction", "runtime_s", "windows_per_s")]
        flags = html.escape(r["error"]) if r["error"] else _flags_html(r["flags"])
        lines.append([*cells, f"<td>{flags}</td>", qc_cell])
    bar = sortable.filter_bar(
        "slides", placeholder="Filter by slide or patient id", statuses=STATUSES
    )
    table = sortable.sortable_table(
        "slides",
        SLIDE_COLUMNS,
        lines,
        statuses=[r["status"] for r in rows],
        classes=["failed" if r["status"] == FAILED else "" for r in rows],
    )
    return bar + table


def render_cohort_html(
    cohort: CohortStatus, rows: Sequence[dict[str, Any]], report_dir: str | Path
) -> str:
    """The cohort ``report.html``: counts, failed slides, patients, flags, one line per slide.

    The viewer command names the run's results folder, wherever the report is written.
    """
    failed = [r for r in rows if r["status"] == FAILED]
    counts = {f: sum(f in (r["flags"] or ()) for r in rows) for f in metrics.FLAGS}
    banner = "bad" if failed else "ok"
    parts = [
        "<h1>wsiproc QC report</h1>",
        f'<div class="banner {banner}">{len(rows)} slides: '
        f"{html.escape(cohort.counts_text())}</div>",
        viewer_hint_html(cohort.layout.results),
    ]
    if failed:
        parts += ["<h2>Failed slides</h2>", _failed_html(failed, report_dir)]
    parts += ["<h2>Patients</h2>", _patients_html(cohort.patients, report_dir), "<h2>QC flags</h2>"]
    flag_lines = [[f"<th>{html.escape(f)}</th>", html_cell(n)] for f, n in counts.items()]
    parts += [html_table(["Flag", "Slides"], flag_lines), "<h2>Slides</h2>"]
    parts.append(_slides_html(rows, report_dir))
    parts.append(f"<script>{sortable.SCRIPT}</script>")
    return html_page(
        "wsiproc QC report",
        "\n".join(parts),
        head=f"<style>{sortable.CSS}</style>{sortable.NOSCRIPT}\n",
    )


def write_cohort_report(cohort: CohortStatus, *, out_html: str | Path, out_tsv: str | Path) -> int:
    """Write ``report.html`` and ``summary.tsv`` (atomically) for every slide; return the count."""
    report_dir = Path(out_html).parent
    rows = summary_rows(cohort, report_dir)
    page = render_cohort_html(cohort, rows, report_dir)
    tsv = "\t".join(SUMMARY_COLUMNS) + "\n"
    tsv += "".join("\t".join(_tsv_value(r[k]) for k in SUMMARY_COLUMNS) + "\n" for r in rows)
    with atomic_write(out_html) as fh:
        fh.write(page)
    with atomic_write(out_tsv) as fh:
        fh.write(tsv)
    return len(rows)
