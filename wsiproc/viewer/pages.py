"""The viewer's two HTML pages: the index of the run's slides, and one slide's page.

Markup only: the slide page carries its settings as one JSON block that ``static/viewer.js``
reads, so every number the browser uses (size, mpp, outputs, colour ranges, window geometry)
comes from the server's own records, never from the URL.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ..cohort import FAILED
from ..colormap import COLORMAP_NAMES, DEFAULT_COLORMAP
from ..qc.render import viewer_page_path
from .catalog import SlideEntry
from .resources import SlideResources

STATIC_PREFIX = "/static/"


def files_url(entry: SlideEntry, name: str) -> str:
    """URL of one of the slide's result files, served from the results folder."""
    return f"/files/{quote(entry.patient, safe='')}/{quote(entry.slide_id, safe='')}/{name}"


def _page(title: str, body: str, *, scripts: Sequence[str] = ()) -> str:
    """A complete HTML page with the viewer's stylesheet and the given scripts."""
    tags = "".join(f'<script src="{STATIC_PREFIX}{name}"></script>\n' for name in scripts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<link rel="stylesheet" href="{STATIC_PREFIX}viewer.css">\n</head>\n'
        f"<body>\n{body}\n{tags}</body>\n</html>\n"
    )


def _flags(entry: SlideEntry) -> str:
    """Status and flags as badges (the error of a failed slide as text)."""
    css = {"ok": "ok", "flagged": "flagged", FAILED: "failed"}.get(entry.status, "notrun")
    parts = [f'<span class="status {css}">{html.escape(entry.status)}</span>']
    parts += [f'<span class="flag">{html.escape(flag)}</span>' for flag in entry.flags]
    if entry.error:
        stage = f"{entry.failed_stage}: " if entry.failed_stage else ""
        parts.append(f'<span class="error">{html.escape(stage + entry.error)}</span>')
    return " ".join(parts)


def render_index(results: str, entries: Sequence[SlideEntry]) -> str:
    """The index: every slide of the run by patient, with thumbnail, status, flags, links."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    parts = [
        "<h1>wsiproc viewer</h1>",
        f"<p>Results: <code>{html.escape(results)}</code> · {len(entries)} slides "
        f"({html.escape(summary or 'none')}) · "
        '<a href="/files/report.html">report.html</a> · '
        '<a href="/files/summary.tsv">summary.tsv</a></p>',
    ]
    by_patient: dict[str, list[SlideEntry]] = {}
    for entry in entries:
        by_patient.setdefault(entry.patient, []).append(entry)
    for patient, slides in by_patient.items():
        parts.append(f"<h2>Patient {html.escape(patient)}</h2>")
        rows = []
        for entry in slides:
            page = html.escape(viewer_page_path(entry.slide_id), quote=True)
            thumb = ""
            if entry.file("thumbnail.png").is_file():
                src = html.escape(files_url(entry, "thumbnail.png"), quote=True)
                thumb = f'<a href="{page}"><img class="thumb" src="{src}" alt="thumbnail"></a>'
            qc = ""
            if entry.file("qc.html").is_file():
                qc = f'<a href="{html.escape(files_url(entry, "qc.html"), quote=True)}">qc.html</a>'
            rows.append(
                f'<tr class="slide" data-slide="{html.escape(entry.slide_id, quote=True)}">'
                f"<td>{thumb}</td>"
                f'<td><a class="slide-link" href="{page}">{html.escape(entry.slide_id)}</a></td>'
                f"<td>{_flags(entry)}</td><td>{qc}</td></tr>"
            )
        parts.append(
            '<table class="slides"><tr><th>Thumbnail</th><th>Slide</th><th>Status and QC '
            "flags</th><th>QC</th></tr>\n" + "\n".join(rows) + "\n</table>"
        )
    return _page("wsiproc viewer", "\n".join(parts))


def slide_settings(res: SlideResources) -> dict[str, Any]:
    """Everything ``viewer.js`` needs about one slide, as JSON-ready values."""
    entry = res.entry
    base = viewer_page_path(entry.slide_id)
    settings: dict[str, Any] = {
        "slide": entry.slide_id,
        "patient": entry.patient,
        "static": STATIC_PREFIX,
        "dzi": None,
        "width": None,
        "height": None,
        "mpp": res.mpp,
        "heatmap": None,
        "windows": None,
    }
    if res.tiler is not None:
        info = res.tiler.pool.info
        settings.update(dzi=f"{base}/slide.dzi", width=info.width, height=info.height)
    if res.raster is not None:
        raster = res.raster
        colormap = raster.default_colormap
        settings["heatmap"] = {
            "base": f"{base}/heatmap/",
            "outputs": list(raster.outputs),
            "output": raster.default_output,
            "colormaps": list(COLORMAP_NAMES),
            "colormap": colormap if colormap in COLORMAP_NAMES else DEFAULT_COLORMAP,
            "ranges": {name: raster.value_range(i) for i, name in enumerate(raster.outputs)},
        }
    if res.table is not None and res.record is not None:
        record = res.record
        settings["windows"] = {
            "at": f"{base}/window.json",
            "inView": f"{base}/windows.json",
            "kernelL0": record.kernel_size * record.scale,
            "count": record.windows_processed,
        }
    return settings


def render_slide(res: SlideResources) -> str:
    """One slide's page: the pan-and-zoom viewer with its heatmap, controls and QC."""
    entry = res.entry
    title = f"{entry.patient} / {entry.slide_id}"
    qc = ""
    if entry.file("qc.html").is_file():
        href = html.escape(files_url(entry, "qc.html"), quote=True)
        qc = f' · <a id="qc-link" href="{href}">qc.html</a>'
    problems = [p for p in (res.slide_error, res.overlay_error) if p]
    notes = "".join(f'<p class="problem">{html.escape(p)}</p>' for p in problems)
    settings = json.dumps(slide_settings(res)).replace("</", "<\\/")
    body = f"""<header>
<a href="/">All slides</a>
<h1>{html.escape(title)}</h1>
<div id="qc">{_flags(entry)}{qc}</div>
</header>
{notes}
<main>
<div id="viewer"><div id="scalebar"><div id="scalebar-bar"></div>
<span id="scalebar-label"></span></div></div>
<aside id="panel">
<label>Output <select id="output"></select></label>
<label>Colour map <select id="colormap"></select></label>
<label>Opacity <input id="opacity" type="range" min="0" max="100" value="60">
<span id="opacity-value">60%</span></label>
<div id="legend"><img id="legend-bar" alt="colour scale">
<div><span id="legend-min"></span><span id="legend-max"></span></div></div>
<h2>Window</h2>
<div id="window-info">Click a window on the slide to see its row of windows.csv.</div>
</aside>
</main>
<script id="wsiproc-settings" type="application/json">{settings}</script>"""
    return _page(title, body, scripts=("openseadragon/openseadragon.min.js", "viewer.js"))
