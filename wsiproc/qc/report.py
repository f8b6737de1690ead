"""The cohort QC report of ``wsiproc report``: ``report.html`` and ``summary.tsv``.

Kept apart from the per-slide modules because it only renders: every slide of the sample
sheet gets one line, its QC numbers from a finished ``qc.json`` and its status (failed stage,
error, log) from :mod:`wsiproc.cohort`, which decides what happened to it.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..cohort import FAILED, CohortStatus, PatientStatus
from ..errors import WsiprocError
from . import metrics
from .collect import load_qc
from .inputs import load_rgb, resolve_recorded
from .render import (
    html_cell,
    html_page,
    html_table,
    png_data_uri,
    viewer_hint_html,
    viewer_link_html,
)

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
"""Longer side of the thumbnails embedded in the cohort report."""


def qc_html_path(record: dict[str, Any], qc_json: str | Path) -> Path:
    """Where a slide's ``qc.html`` is: beside its ``qc.json`` (the workflow's layout, right
    also after the results folder was moved or copied), else where ``qc.json`` recorded it."""
    beside = Path(qc_json).with_suffix(".html")
    recorded = record.get("html")
    if beside.exists() or not recorded:
        return beside
    return Path(recorded)


def summary_rows(cohort: CohortStatus, report_dir: str | Path) -> list[dict[str, Any]]:
    """One :data:`SUMMARY_COLUMNS` dict per slide of the sheet, sorted by patient then slide ID.

    QC columns come from ``qc.json`` for ``ok`` and ``flagged`` slides only (a failed slide's
    ``qc.json`` may be left from an earlier run); ``qc_html`` is the link to the slide's
    ``qc.html`` relative to ``report_dir``.
    """
    rows = []
    for slide in cohort.slides:
        row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
        row["thumbnail_uri"] = None
        if slide.qc_json is not None:
            record = load_qc(slide.qc_json)
            row.update({key: record.get(key) for key in QC_COLUMNS})
            row["flags"] = list(record.get("flags") or [])
            link = qc_html_path(record, slide.qc_json)
            row["qc_html"] = os.path.relpath(link, start=report_dir)
            row["thumbnail_uri"] = _thumbnail_uri(record.get("thumbnail"), slide.qc_json.parent)
        row.update(patient=slide.patient, slide_id=slide.slide, status=slide.status)
        row.update(failed_stage=slide.stage, error=slide.error)
        row["log"] = None if slide.log is None else str(slide.log)
        rows.append(row)
    rows.sort(key=lambda r: (r["patient"], r["slide_id"]))
    return rows


def _thumbnail_uri(recorded: str | None, base: Path) -> str | None:
    """A small embedded thumbnail for the cohort table, or None if the image is gone."""
    path = resolve_recorded(recorded, base)
    if path is None or not path.exists():
        return None
    try:
        return png_data_uri(load_rgb(path), max_px=COHORT_THUMB_PX)
    except WsiprocError:
        return None


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
    href = Path(os.path.relpath(path, start=report_dir)).as_posix()
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _patients_html(patients: Sequence[PatientStatus], report_dir: str | Path) -> str:
    """One line per patient: its CSV, or why there is none."""
    lines, classes = [], []
    for p in patients:
        if p.csv is not None:
            csv_cell = f"<td>{_link(p.csv, report_dir, p.csv.name)}</td>"
        else:
            csv_cell = f"<td>none: {html.escape(p.reason or '')}</td>"
        lines.append(
            [html_cell(p.patient), html_cell(len(p.slides)), html_cell(p.status), csv_cell]
        )
        classes.append("failed" if p.status == FAILED else "")
    return html_table(["Patient", "Slides", "Status", "Patient CSV"], lines, classes)


def _failed_html(rows: Sequence[dict[str, Any]], report_dir: str | Path) -> str:
    """The failed slides with the stage, the error and a link to the log."""
    lines = [
        [html_cell(r[k]) for k in ("patient", "slide_id", "failed_stage", "error")]
        + [f"<td>{_link(r['log'], report_dir, r['log'])}</td>"]
        for r in rows
    ]
    header = ["Patient", "Slide", "Stage", "Error", "Log"]
    return html_table(header, lines, ["failed"] * len(lines))


def _slides_html(rows: Sequence[dict[str, Any]], report_dir: str | Path) -> str:
    """One line per slide: thumbnail, QC numbers and flags, or the failure and its log."""
    header = ["Thumbnail", "Patient", "Slide", "Status", "Level", "mpp", "Windows processed"]
    header += ["Tissue %", "Blur", "Pen", "Runtime (s)", "Windows/s", "Flags", "QC"]
    lines = []
    for r in rows:
        thumb = r.get("thumbnail_uri")
        if r["qc_html"] is not None:
            link = html.escape(Path(r["qc_html"]).as_posix(), quote=True)
            image = f'<a href="{link}"><img src="{thumb}" alt="thumbnail"></a>' if thumb else ""
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
    classes = ["failed" if r["status"] == FAILED else "" for r in rows]
    return html_table(header, lines, classes)


def render_cohort_html(
    cohort: CohortStatus, rows: Sequence[dict[str, Any]], report_dir: str | Path
) -> str:
    """The cohort ``report.html``: counts, failed slides, patients, flags, one line per slide."""
    failed = [r for r in rows if r["status"] == FAILED]
    counts = {f: sum(f in (r["flags"] or ()) for r in rows) for f in metrics.FLAGS}
    banner = "bad" if failed else "ok"
    parts = [
        "<h1>wsiproc QC report</h1>",
        f'<div class="banner {banner}">{len(rows)} slides: '
        f"{html.escape(cohort.counts_text())}</div>",
        viewer_hint_html(report_dir),
    ]
    if failed:
        parts += ["<h2>Failed slides</h2>", _failed_html(failed, report_dir)]
    parts += ["<h2>Patients</h2>", _patients_html(cohort.patients, report_dir), "<h2>QC flags</h2>"]
    flag_lines = [[f"<th>{html.escape(f)}</th>", html_cell(n)] for f, n in counts.items()]
    parts += [html_table(["Flag", "Slides"], flag_lines), "<h2>Slides</h2>"]
    parts.append(_slides_html(rows, report_dir))
    return html_page("wsiproc QC report", "\n".join(parts))


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
