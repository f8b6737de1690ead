"""The viewer's two HTML pages: the index of the run's slides, and one slide's page.

What each page shows, as values for its template (``templates/viewer_index.html`` and
``viewer_slide.html``): the slide page carries its settings as one JSON block that
``static/viewer.js`` reads, so every number the browser uses (size, mpp, outputs, colour ranges,
window geometry) comes from the server's own records, never from the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ..cohort import FAILED, FLAGGED, OK
from ..colormap import COMMON_COLORMAPS, DEFAULT_COLORMAP, is_colormap
from ..qc.render import viewer_page_path
from ..webpage import render_page
from .catalog import SlideEntry
from .resources import SlideResources

STATIC_PREFIX = "/static/"

SCRIPTS = ("openseadragon/openseadragon.min.js", "viewer.js")
"""The slide page's scripts, under :data:`STATIC_PREFIX`, in load order."""

ATTENTION_PATH = "attention"
"""URL segment of the attention layer's DZIs and tiles under a slide's page (``heatmap`` is
the patch model's)."""

ATTENTION_SUFFIX = " (slide model)"
"""Added to an attention head's name in the layer choice, beside the patch model's outputs."""

STATUS_CLASSES = {OK: "ok", FLAGGED: "flagged", FAILED: "failed"}
"""CSS class of each status badge; any other status (not run) is ``notrun``."""


def files_url(entry: SlideEntry, name: str) -> str:
    """URL of one of the slide's result files, served from the results folder."""
    return f"/files/{quote(entry.patient, safe='')}/{quote(entry.slide_id, safe='')}/{name}"


def _slide_view(entry: SlideEntry) -> dict[str, Any]:
    """What both pages show of one slide: ids, status badge, flags, error, links."""
    has = entry.file
    return {
        "slide_id": entry.slide_id,
        "status": entry.status,
        "status_class": STATUS_CLASSES.get(entry.status, "notrun"),
        "flags": entry.flags,
        "error": None
        if not entry.error
        else (f"{entry.failed_stage}: " if entry.failed_stage else "") + entry.error,
        "page": viewer_page_path(entry.slide_id),
        "thumbnail": files_url(entry, "thumbnail.png") if has("thumbnail.png").is_file() else None,
        "qc": files_url(entry, "qc.html") if has("qc.html").is_file() else None,
    }


def render_index(results: str, entries: Sequence[SlideEntry]) -> str:
    """The index: every slide of the run by patient, with thumbnail, status, flags, links."""
    counts: dict[str, int] = {}
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
        by_patient.setdefault(entry.patient, []).append(_slide_view(entry))
    return render_page(
        "viewer_index.html",
        title="wsiproc viewer",
        results=results,
        total=len(entries),
        summary=", ".join(f"{n} {status}" for status, n in counts.items()),
        by_patient=by_patient,
    )


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
    layers = []
    if res.raster is not None:
        layers.append((res.raster, f"{base}/heatmap/", ""))
    if res.attention is not None:
        layers.append((res.attention.raster, f"{base}/{ATTENTION_PATH}/", ATTENTION_SUFFIX))
    if layers:
        first = layers[0][0]
        made_with = first.default_colormap
        colormap = made_with if made_with and is_colormap(made_with) else DEFAULT_COLORMAP
        choices = list(COMMON_COLORMAPS)
        if colormap not in choices:
            choices.append(colormap)
        labels, urls, ranges = [], {}, {}
        for raster, url, suffix in layers:
            for i, name in enumerate(raster.outputs):
                label = name + suffix
                labels.append(label)
                urls[label] = url + quote(name, safe="") + "/"
                ranges[label] = raster.value_range(i)
        settings["heatmap"] = {
            "outputs": labels,
            "output": first.default_output + layers[0][2],
            "urls": urls,
            "colormaps": choices,
            "colormap": colormap,
            "ranges": ranges,
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
    return render_page(
        "viewer_slide.html",
        title=title,
        slide=_slide_view(entry),
        problems=[p for p in (res.slide_error, res.overlay_error) if p],
        settings=slide_settings(res),
        prediction=res.prediction,
        scripts=[STATIC_PREFIX + name for name in SCRIPTS],
    )
