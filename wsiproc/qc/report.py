"""The cohort QC report of ``wsiproc report``: ``report.html`` and ``summary.tsv``.

Kept apart from the per-slide modules because it reads finished ``qc.json`` files only, one
line per slide, and is its own workflow stage.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import WsiprocError
from . import metrics
from .collect import load_qc
from .inputs import load_rgb, resolve_recorded
from .render import html_cell, html_page, html_table, png_data_uri

SUMMARY_COLUMNS = (
    "patient", "slide_id", "level", "proc_mpp", "mpp_source", "windows_total",
    "windows_processed", "windows_skipped", "tissue_percent", "blur_score", "pen_fraction",
    "runtime_s", "windows_per_s", "max_rss_mb", "flags", "qc_html",
)  # fmt: skip
"""Columns of ``summary.tsv`` and of the cohort table, in order."""

COHORT_THUMB_PX = 160
"""Longer side of the thumbnails embedded in the cohort report."""


def qc_html_path(record: dict[str, Any], qc_json: str | Path) -> Path:
    """Where a slide's ``qc.html`` is: as recorded if it exists, else beside its ``qc.json``."""
    recorded = record.get("html")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    return Path(qc_json).with_suffix(".html")


def summary_rows(qc_jsons: Sequence[str | Path], report_dir: str | Path) -> list[dict[str, Any]]:
    """One :data:`SUMMARY_COLUMNS` dict per slide, sorted by patient then slide ID.

    ``qc_html`` is the link to the slide's ``qc.html`` relative to ``report_dir``.
    """
    rows = []
    for path in qc_jsons:
        record = load_qc(path)
        row = {key: record.get(key) for key in SUMMARY_COLUMNS}
        row["flags"] = list(record.get("flags") or [])
        row["qc_html"] = os.path.relpath(qc_html_path(record, path), start=report_dir)
        row["thumbnail_uri"] = _thumbnail_uri(record.get("thumbnail"), Path(path).parent)
        rows.append(row)
    rows.sort(key=lambda r: (str(r["patient"] or ""), str(r["slide_id"] or "")))
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


def _flags_html(names: Sequence[str]) -> str:
    """Flags as red badges, or a green OK."""
    if not names:
        return '<span class="okflag">OK</span>'
    return "".join(f'<span class="flag">{html.escape(n)}</span>' for n in names)


def render_cohort_html(rows: Sequence[dict[str, Any]]) -> str:
    """The cohort ``report.html``: flag counts and one linked table line per slide."""
    flagged = sum(1 for r in rows if r["flags"])
    counts = {f: sum(f in r["flags"] for r in rows) for f in metrics.FLAGS}
    parts = [
        "<h1>wsiproc QC report</h1>",
        f"<p>{len(rows)} slides, {flagged} flagged.</p>",
        html_table(
            ["Flag", "Slides"],
            [[f"<th>{html.escape(f)}</th>", html_cell(n)] for f, n in counts.items()],
        ),
    ]
    header = ["Thumbnail", "Patient", "Slide", "Level", "mpp", "Windows processed", "Tissue %"]
    header += ["Blur", "Pen"]
    header += ["Runtime (s)", "Windows/s", "Flags", "QC"]
    lines = []
    for r in rows:
        link = html.escape(Path(r["qc_html"]).as_posix(), quote=True)
        thumb = r.get("thumbnail_uri")
        cells = [
            f'<td><a href="{link}"><img src="{thumb}" alt="thumbnail"></a></td>'
            if thumb
            else "<td></td>"
        ]
        cells += [html_cell(r[k]) for k in ("patient", "slide_id", "level", "proc_mpp")]
        cells += [html_cell(r[k]) for k in ("windows_processed", "tissue_percent", "blur_score")]
        cells += [html_cell(r[k]) for k in ("pen_fraction", "runtime_s", "windows_per_s")]
        cells += [f"<td>{_flags_html(r['flags'])}</td>", f'<td><a href="{link}">qc</a></td>']
        lines.append(cells)
    parts.append(html_table(header, lines))
    return html_page("wsiproc QC report", "\n".join(parts))


def write_cohort_report(
    qc_jsons: Sequence[str | Path], *, out_html: str | Path, out_tsv: str | Path
) -> int:
    """Write ``report.html`` and ``summary.tsv`` (atomically) for the slides; return their count."""
    rows = summary_rows(qc_jsons, Path(out_html).parent)
    page = render_cohort_html(rows)
    tsv = "\t".join(SUMMARY_COLUMNS) + "\n"
    tsv += "".join("\t".join(_tsv_value(r[k]) for k in SUMMARY_COLUMNS) + "\n" for r in rows)
    with atomic_write(out_html) as fh:
        fh.write(page)
    with atomic_write(out_tsv) as fh:
        fh.write(tsv)
    return len(rows)
