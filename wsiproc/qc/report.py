"""QC files of one slide (``qc.json``, ``qc.html``) and of a cohort (``report.html``, TSV).

Reads what earlier stages wrote, computes :mod:`.metrics` and renders HTML with every image
inlined as a base64 PNG, so each report is one file that can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .. import __version__
from ..atomic import atomic_write
from ..colormap import lookup_table
from ..errors import InputTableError, WsiprocError
from ..heatmap import WindowsMeta, iter_window_chunks, read_meta
from ..table import read_header
from . import metrics

log = logging.getLogger(__name__)

QC_FORMAT = "wsiproc-qc/1"
DISPLAY_MAX_PX = 1024
"""Longest side of an image embedded in ``qc.html`` (display pixels)."""
OVERLAY_ALPHA = 0.5
HISTOGRAM_MAX_OUTPUTS = 12
"""Outputs beyond this many get statistics but no histogram image."""
SUMMARY_COLUMNS = (
    "patient", "slide_id", "level", "proc_mpp", "mpp_source", "windows_total",
    "windows_processed", "windows_skipped", "tissue_percent", "blur_score", "pen_fraction",
    "runtime_s", "windows_per_s", "max_rss_mb", "flags", "qc_html",
)  # fmt: skip
"""Columns of ``summary.tsv`` and of the cohort table, in order."""


@dataclass(frozen=True)
class Thresholds:
    """Flag thresholds (units as in :func:`wsiproc.qc.metrics.flags`)."""

    blur_threshold: float = metrics.BLUR_THRESHOLD
    pen_threshold: float = metrics.PEN_THRESHOLD
    min_tissue_percent: float = metrics.MIN_TISSUE_PERCENT


@dataclass(frozen=True, repr=False)
class SlideQC:
    """QC of one slide: the ``qc.json`` record and the images ``qc.html`` shows."""

    record: dict[str, Any]
    thumbnail: np.ndarray | None
    mask: np.ndarray | None
    overlay: np.ndarray | None
    values: dict[str, np.ndarray] = field(default_factory=dict)
    value_range: tuple[float, float] = (math.nan, math.nan)

    def __repr__(self) -> str:
        shape = None if self.thumbnail is None else self.thumbnail.shape[:2]
        return (
            f"SlideQC(slide_id={self.record.get('slide_id')!r}, "
            f"flags={self.record.get('flags')!r}, thumbnail_shape={shape})"
        )


def load_json(path: str | Path) -> dict[str, Any]:
    """A JSON object written by an earlier stage; :class:`InputTableError` if unusable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc
    except ValueError as exc:
        raise InputTableError(str(path), f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputTableError(str(path), "expected a JSON object")
    return data


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as ``(height, width, 3)`` uint8 RGB, transparency composited on white."""
    image = _open_image(path)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask image as a boolean array, resized (nearest) to ``(height, width)`` if given.

    0/255 and 0/1 masks both work: with no value above 1, any non-zero pixel is tissue.
    """
    image = _open_image(path).convert("L")
    if shape is not None and image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    grey = np.asarray(image)
    return grey >= 128 if grey.max(initial=0) > 1 else grey > 0


def _open_image(path: str | Path) -> Image.Image:
    """Open and decode an image, translating PIL and OS errors."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except UnidentifiedImageError as exc:
        raise InputTableError(str(path), "not a readable image") from exc
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc


def read_benchmark(path: str | Path) -> tuple[float, float | None]:
    """Runtime (s, mean over repeats) and peak RSS (MB, max) from a Snakemake benchmark TSV."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc
    seconds = [_number(r.get("s")) for r in rows]
    seconds = [s for s in seconds if s is not None]
    if not seconds:
        raise InputTableError(str(path), "no 's' (seconds) value: not a Snakemake benchmark TSV")
    rss = [v for v in (_number(r.get("max_rss")) for r in rows) if v is not None]
    return float(np.mean(seconds)), (max(rss) if rss else None)


def _number(text: Any) -> float | None:
    """A finite float parsed from text, or None ("NA", "-", empty)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def resolve_recorded(path: str | None, base: Path) -> Path | None:
    """A path recorded in a JSON file: as written if it exists, else relative to ``base``."""
    if not path:
        return None
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute():
        return candidate
    beside = base / candidate
    return beside if beside.exists() else candidate


def summary_groups(meta: WindowsMeta) -> dict[str, slice]:
    """Summarised value → the slice of CSV output columns it averages.

    A vector output (``output_shape`` ``[C]``) summarises each column; a spatial one
    (``[C, h, w]``) summarises each base name as the per-window mean of its ``h × w`` cells,
    so memory stays ``windows × C`` whatever the spatial size.

    Examples
    --------
    >>> m = WindowsMeta("w.json", 1, 1, 1, 1, None, 1.0, ("a_0_0", "a_0_1"), ("a",), (1, 1, 2))
    >>> summary_groups(m)
    {'a': slice(0, 2, None)}
    """
    if meta.is_spatial:
        size = meta.block_shape[0] * meta.block_shape[1]
        return {n: slice(i * size, (i + 1) * size) for i, n in enumerate(meta.output_names)}
    return {n: slice(i, i + 1) for i, n in enumerate(meta.outputs)}


def scan_windows(
    csv_path: str | Path,
    meta: WindowsMeta,
    *,
    raster_shape: tuple[int, int],
    l0_per_px: float,
) -> tuple[int, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Stream ``windows.csv`` in chunks: row count, summarised values, first-value raster.

    Returns ``(rows, values, sums, counts)``: ``values`` maps each :func:`summary_groups` key
    to a float32 array over windows; ``sums``/``counts`` paint the first key onto a raster of
    ``raster_shape`` pixels of ``l0_per_px`` level-0 pixels (see
    :func:`~wsiproc.qc.metrics.window_mean_raster`).
    """
    groups = summary_groups(meta)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in groups}
    sums = np.zeros(raster_shape)
    counts = np.zeros(raster_shape)
    rows = 0
    first = next(iter(groups), None)
    for chunk in iter_window_chunks(csv_path, meta, with_geometry=True):
        rows += len(chunk.rows)
        for name, cells in groups.items():
            block = chunk.values[:, cells]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
                column = block[:, 0] if block.shape[1] == 1 else np.nanmean(block, axis=1)
            parts[name].append(column.astype(np.float32))
        if first is not None and chunk.boxes is not None:
            s, c = metrics.window_mean_raster(
                chunk.boxes, parts[first][-1], shape=raster_shape, l0_per_px=l0_per_px
            )
            sums += s
            counts += c
    values = {n: np.concatenate(p) if p else np.zeros(0, np.float32) for n, p in parts.items()}
    return rows, values, sums, counts


def build_qc(
    slide: str,
    *,
    level_json: str | Path,
    windows: str | Path,
    meta: str | Path | None = None,
    thumbnail: str | Path | None = None,
    mask: str | Path | None = None,
    benchmark: str | Path | None = None,
    html_path: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
) -> SlideQC:
    """Measure one slide from the files of earlier stages.

    Parameters
    ----------
    slide : str
        Slide path, recorded as is.
    level_json, windows : path
        ``level.json`` of ``wsiproc level`` and ``windows.csv`` of ``wsiproc infer``.
    meta : path, optional
        ``windows.json``; default: ``windows`` with suffix ``.json``.
    thumbnail, mask : path, optional
        Default: the ``thumbnail`` / ``mask`` paths recorded in ``level.json`` (as written, or
        relative to its directory). Without them blur/pen (thumbnail) or the measured tissue %
        (mask) are null and a warning is recorded.
    benchmark : path, optional
        Snakemake benchmark TSV of the ``infer`` job; default: ``elapsed_s`` of ``windows.json``.
    html_path : path, optional
        Where ``qc.html`` will be written, recorded for the cohort report's links.

    Raises
    ------
    InputTableError
        An input is missing or malformed, or the CSV's outputs differ from ``windows.json``.
    """
    windows = Path(windows)
    read_header(windows)  # a missing CSV is the error to report, before its windows.json
    level = load_json(level_json)
    meta_path = Path(meta) if meta else windows.with_suffix(".json")
    info = load_json(meta_path)
    base = Path(level_json).parent
    thumb_path = Path(thumbnail) if thumbnail else resolve_recorded(level.get("thumbnail"), base)
    mask_path = Path(mask) if mask else resolve_recorded(level.get("mask"), base)
    notes: list[str] = []

    rgb = load_rgb(thumb_path) if thumb_path else None
    tissue = load_mask(mask_path, None if rgb is None else rgb.shape[:2]) if mask_path else None
    if tissue is not None:
        tissue_pct = metrics.tissue_percent(tissue)
    else:
        notes.append("no tissue mask: tissue % taken from level.json")
        tissue_pct = _number(level.get("tissue_percent"))
        tissue_pct = math.nan if tissue_pct is None else tissue_pct
    blur = pen = math.nan
    if rgb is None:
        notes.append("no thumbnail: blur score and pen fraction not measured")
    else:
        pen = metrics.pen_fraction(rgb)
        if tissue is not None:
            blur = metrics.blur_score(rgb, tissue)

    l0_width = int(level.get("width") or info.get("l0_width") or 1)
    l0_height = int(level.get("height") or info.get("l0_height") or 1)
    if rgb is not None:
        shape = rgb.shape[:2]
        l0_per_px = _number(level.get("thumbnail_scale")) or l0_width / shape[1]
    else:
        l0_per_px = max(l0_width, l0_height) / DISPLAY_MAX_PX
        shape = (math.ceil(l0_height / l0_per_px), math.ceil(l0_width / l0_per_px))
    rows, values, sums, counts = scan_windows(
        windows, read_meta(meta_path), raster_shape=shape, l0_per_px=l0_per_px
    )
    processed = int(info.get("windows_processed", rows))
    if processed != rows:
        notes.append(f"windows.json says {processed} windows processed, the CSV has {rows} rows")
    summary = metrics.output_summary(values)
    first = next(iter(summary.values()), None)
    value_range = (first["min"], first["max"]) if first else (math.nan, math.nan)
    overlay = _overlay(rgb, sums, counts, value_range)

    if benchmark:
        runtime_s, max_rss_mb = read_benchmark(benchmark)
        source = "benchmark"
    else:
        runtime_s, max_rss_mb, source = _number(info.get("elapsed_s")), None, "windows.json"
    if runtime_s:
        per_s = processed / runtime_s
    else:
        per_s = _number(info.get("windows_per_s")) if source == "windows.json" else None
    mpp_source = level.get("mpp_source", info.get("mpp_source"))
    record: dict[str, Any] = {
        "format": QC_FORMAT,
        "wsiproc_version": __version__,
        "slide": str(slide),
        "slide_id": info.get("slide_id") or Path(slide).stem,
        "patient": info.get("patient"),
        "level": level.get("level", info.get("level")),
        "level_downsample": level.get("level_downsample", info.get("level_downsample")),
        "proc_mpp": level.get("proc_mpp", info.get("proc_mpp")),
        "mpp_source": mpp_source,
        "scale": level.get("scale", info.get("scale")),
        "vendor": level.get("vendor"),
        "objective_power": level.get("objective_power"),
        "model": info.get("model"),
        "windows_total": info.get("windows_total"),
        "windows_processed": processed,
        "windows_skipped": info.get("windows_skipped"),
        "csv_rows": rows,
        "tissue_percent": tissue_pct,
        "blur_score": blur,
        "pen_fraction": pen,
        "outputs": summary,
        "runtime_s": runtime_s,
        "windows_per_s": per_s,
        "max_rss_mb": max_rss_mb,
        "runtime_source": source,
        "thresholds": {
            "blur_threshold": thresholds.blur_threshold,
            "pen_threshold": thresholds.pen_threshold,
            "min_tissue_percent": thresholds.min_tissue_percent,
        },
        "flags": metrics.flags(
            tissue_percent=tissue_pct,
            windows_processed=processed,
            blur_score=blur,
            pen_fraction=pen,
            mpp_source=mpp_source,
            min_tissue_percent=thresholds.min_tissue_percent,
            blur_threshold=thresholds.blur_threshold,
            pen_threshold=thresholds.pen_threshold,
        ),
        "warnings": notes,
        "level_json": str(level_json),
        "windows": str(windows),
        "meta": str(meta_path),
        "benchmark": None if benchmark is None else str(benchmark),
        "thumbnail": None if thumb_path is None else str(thumb_path),
        "mask": None if mask_path is None else str(mask_path),
        "html": None if html_path is None else str(html_path),
    }
    for note in notes:
        log.warning("%s: %s", slide, note)
    return SlideQC(record, rgb, tissue, overlay, values, value_range)


def colormap(fraction: np.ndarray) -> np.ndarray:
    """Viridis RGB (uint8, shape ``(..., 3)``) of values in [0, 1] (clipped, NaN as 0).

    Examples
    --------
    >>> colormap(np.array([0.0, 1.0])).tolist()
    [[68, 1, 84], [253, 231, 37]]
    """
    t = np.clip(np.nan_to_num(np.asarray(fraction, dtype=np.float64)), 0.0, 1.0)
    return lookup_table("viridis")[np.rint(t * 255).astype(np.intp)]


def _overlay(
    rgb: np.ndarray | None, sums: np.ndarray, counts: np.ndarray, value_range: tuple[float, float]
) -> np.ndarray:
    """Window means through the colormap at :data:`OVERLAY_ALPHA` over the thumbnail (or white)."""
    base = np.full((*sums.shape, 3), 255, np.uint8) if rgb is None else rgb
    painted = counts > 0
    lo, hi = value_range
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=painted)
    span = hi - lo if math.isfinite(hi - lo) and hi > lo else 0.0
    fraction = (mean - lo) / span if span else np.full_like(mean, 0.5)
    blend = base.astype(np.float64)
    colour = colormap(fraction).astype(np.float64)
    blend[painted] = (1 - OVERLAY_ALPHA) * blend[painted] + OVERLAY_ALPHA * colour[painted]
    return np.rint(blend).astype(np.uint8)


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


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_qc_json(qc: SlideQC, path: str | Path) -> None:
    """Write ``qc.json`` atomically (strict JSON: unknown numbers are ``null``)."""
    text = json.dumps(_jsonable(qc.record), indent=2, allow_nan=False)
    with atomic_write(path) as fh:
        fh.write(text + "\n")


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
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{border:1px solid #ccc}
img.slide{width:480px;max-width:100%}
figcaption{font-size:.85em;color:#555}
"""

_META_ROWS = (
    ("Slide", "slide"), ("Patient", "patient"), ("Slide ID", "slide_id"),
    ("Vendor", "vendor"), ("Objective power", "objective_power"), ("Model", "model"),
    ("Level", "level"), ("Level downsample", "level_downsample"), ("Scale (l0 px / proc px)",
    "scale"), ("Processing mpp (µm/px)", "proc_mpp"), ("mpp source", "mpp_source"),
    ("Windows total", "windows_total"), ("Windows processed", "windows_processed"),
    ("Windows skipped", "windows_skipped"), ("Tissue %", "tissue_percent"),
    ("Blur score", "blur_score"), ("Pen fraction", "pen_fraction"),
)  # fmt: skip


def _page(title: str, body: str) -> str:
    """A complete self-contained HTML page."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table from already-escaped cell HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(cells) + "</tr>\n" for cells in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def _cell(value: Any) -> str:
    """One escaped table cell, numbers right-aligned."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td{' class=num' if numeric else ''}>{html.escape(_fmt(value))}</td>"


def _figure(uri: str, caption: str, css_class: str = "chart") -> str:
    """An inline image with an escaped caption."""
    alt = html.escape(caption)
    img = f'<img class="{css_class}" src="{uri}" alt="{alt}">'
    return f"<figure>{img}<figcaption>{alt}</figcaption></figure>\n"


def _flags_html(names: Sequence[str]) -> str:
    """Flags as red badges, or a green OK."""
    if not names:
        return '<span class="okflag">OK</span>'
    return "".join(f'<span class="flag">{html.escape(n)}</span>' for n in names)


def render_slide_html(qc: SlideQC) -> str:
    """The self-contained ``qc.html`` page of one slide (no scripts, no external resources)."""
    rec = qc.record
    name = f"{_fmt(rec.get('patient'))} / {_fmt(rec.get('slide_id'))}"
    parts = [f"<h1>QC: {html.escape(name)}</h1>"]
    if rec["flags"]:
        parts.append(f'<div class="banner bad">{html.escape(", ".join(rec["flags"]))}</div>')
    else:
        parts.append('<div class="banner ok">OK</div>')
    parts += [f"<p>{html.escape('warning: ' + w)}</p>" for w in rec.get("warnings", [])]
    meta_rows = [[f"<th>{html.escape(k)}</th>", _cell(rec.get(key))] for k, key in _META_ROWS]
    parts += ["<h2>Slide</h2>", _table(["Field", "Value"], meta_rows), "<h2>Images</h2>"]
    if qc.thumbnail is not None:
        parts.append(_figure(png_data_uri(qc.thumbnail), "Thumbnail", "slide"))
    if qc.mask is not None:
        parts.append(_figure(png_data_uri(qc.mask), "Tissue mask", "slide"))
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
        [f"<th>{html.escape(n)}</th>", *(_cell(s[k]) for k in metrics.SUMMARY_KEYS)]
        for n, s in rec["outputs"].items()
    ]
    parts.append(_table(["Output", *metrics.SUMMARY_KEYS], stat_rows))
    runtime = [
        ["<th>Runtime (s)</th>", _cell(rec.get("runtime_s"))],
        ["<th>Windows / s</th>", _cell(rec.get("windows_per_s"))],
        ["<th>Peak RSS (MB)</th>", _cell(rec.get("max_rss_mb"))],
        ["<th>Source</th>", _cell(rec.get("runtime_source"))],
    ]
    parts += ["<h2>Runtime</h2>", _table(["Field", "Value"], runtime)]
    thresholds = [[f"<th>{html.escape(k)}</th>", _cell(v)] for k, v in rec["thresholds"].items()]
    parts += ["<h2>Thresholds</h2>", _table(["Flag threshold", "Value"], thresholds)]
    return _page(f"QC {name}", "\n".join(parts))


def write_qc_html(qc: SlideQC, path: str | Path) -> None:
    """Write ``qc.html`` atomically."""
    page = render_slide_html(qc)
    with atomic_write(path) as fh:
        fh.write(page)


def load_qc(path: str | Path) -> dict[str, Any]:
    """A ``qc.json`` record, checked to be one."""
    record = load_json(path)
    if record.get("format") != QC_FORMAT:
        raise InputTableError(str(path), f"not a wsiproc QC file (format is not {QC_FORMAT})")
    return record


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


COHORT_THUMB_PX = 160
"""Longer side of the thumbnails embedded in the cohort report."""


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


def render_cohort_html(rows: Sequence[dict[str, Any]]) -> str:
    """The cohort ``report.html``: flag counts and one linked table line per slide."""
    flagged = sum(1 for r in rows if r["flags"])
    counts = {f: sum(f in r["flags"] for r in rows) for f in metrics.FLAGS}
    parts = [
        "<h1>wsiproc QC report</h1>",
        f"<p>{len(rows)} slides, {flagged} flagged.</p>",
        _table(
            ["Flag", "Slides"],
            [[f"<th>{html.escape(f)}</th>", _cell(n)] for f, n in counts.items()],
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
        cells += [_cell(r[k]) for k in ("patient", "slide_id", "level", "proc_mpp")]
        cells += [_cell(r[k]) for k in ("windows_processed", "tissue_percent", "blur_score")]
        cells += [_cell(r[k]) for k in ("pen_fraction", "runtime_s", "windows_per_s")]
        cells += [f"<td>{_flags_html(r['flags'])}</td>", f'<td><a href="{link}">qc</a></td>']
        lines.append(cells)
    parts.append(_table(header, lines))
    return _page("wsiproc QC report", "\n".join(parts))


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
