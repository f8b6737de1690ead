"""One slide's QC record: metrics and flags measured from earlier stages' files, and ``qc.json``.

Kept apart from :mod:`.render` (pictures and HTML) so the record that ``qc.json`` and the cohort
report rely on can be built and tested without drawing anything.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_write
from ..colormap import DEFAULT_COLORMAP, lookup_table
from ..compiled import describe as describe_compiled
from ..errors import InputTableError
from ..record import read_record
from ..table import read_header
from . import metrics
from .inputs import (
    finite_number,
    load_json,
    load_mask,
    load_rgb,
    read_benchmark,
    resolve_recorded,
    scan_windows,
)
from .stages import features_summary, prediction_summary

log = logging.getLogger(__name__)

QC_FORMAT = "wsiproc-qc/1"
DISPLAY_MAX_PX = 1024
"""Longest side of an image embedded in ``qc.html`` (display pixels)."""
OVERLAY_ALPHA = 0.5


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
    ink: np.ndarray | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)
    value_range: tuple[float, float] = (math.nan, math.nan)

    def __repr__(self) -> str:
        shape = None if self.thumbnail is None else self.thumbnail.shape[:2]
        return (
            f"SlideQC(slide_id={self.record.get('slide_id')!r}, "
            f"flags={self.record.get('flags')!r}, thumbnail_shape={shape})"
        )


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
    features_json: str | Path | None = None,
    slide_json: str | Path | None = None,
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
    features_json, slide_json : path, optional
        Records of the features and slide-model stages: summarised into ``features`` and
        ``prediction`` (null without them); the slide model's flags join the slide's.

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

    unknown = level.get("tissue_unknown") is True
    if unknown:  # the level stage wrote a grey thumbnail and an unknown mask: nothing to measure
        notes.append(f"tissue unknown ({level.get('tissue_unknown_reason')}): no thumbnail metrics")
    rgb = load_rgb(thumb_path) if thumb_path and not unknown else None
    tissue = ink = None
    if mask_path and not unknown:
        tissue, ink = load_mask(mask_path, None if rgb is None else rgb.shape[:2])
    if tissue is not None:
        tissue_pct = metrics.tissue_percent(tissue)
    else:
        if not unknown:
            notes.append("no tissue mask: tissue % taken from level.json")
        tissue_pct = finite_number(level.get("tissue_percent"))
        tissue_pct = math.nan if tissue_pct is None else tissue_pct
    blur = pen = math.nan
    if rgb is None:
        if not unknown:
            notes.append("no thumbnail: blur score and pen fraction not measured")
    else:
        pen = metrics.pen_fraction(rgb)
        if tissue is not None:
            blur = metrics.blur_score(rgb, tissue)

    l0_width = int(level.get("width") or info.get("l0_width") or 1)
    l0_height = int(level.get("height") or info.get("l0_height") or 1)
    if rgb is not None:
        shape = rgb.shape[:2]
        l0_per_px = finite_number(level.get("thumbnail_scale")) or l0_width / shape[1]
    else:
        l0_per_px = max(l0_width, l0_height) / DISPLAY_MAX_PX
        shape = (math.ceil(l0_height / l0_per_px), math.ceil(l0_width / l0_per_px))
    run = read_record(meta_path)
    rows, values, sums, counts = scan_windows(windows, run, raster_shape=shape, l0_per_px=l0_per_px)
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
        runtime_s, max_rss_mb, source = finite_number(info.get("elapsed_s")), None, "windows.json"
    if runtime_s:
        per_s = processed / runtime_s
    else:
        per_s = finite_number(info.get("windows_per_s")) if source == "windows.json" else None
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
        "precision": run.precision,  # as resolved (auto -> bf16/fp32); None in old records
        "compiled": describe_compiled(run.compiled),
        "windows_total": info.get("windows_total"),
        "windows_processed": processed,
        "windows_skipped": info.get("windows_skipped"),
        "csv_rows": rows,
        "read_error_windows": run.read_errors.windows,
        "read_error_regions": list(run.read_errors.regions[:20]),
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
            read_error_windows=run.read_errors.windows,
            upsampled=bool(level.get("upsampled", False)),
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
    record["features"] = None if features_json is None else features_summary(features_json)
    prediction = None if slide_json is None else prediction_summary(slide_json)
    record["prediction"] = prediction
    if prediction is not None:
        record["flags"] += [f for f in prediction["flags"] if f not in record["flags"]]
    for note in notes:
        log.warning("%s: %s", slide, note)
    return SlideQC(record, rgb, tissue, overlay, ink, values, value_range)


def colormap(fraction: np.ndarray) -> np.ndarray:
    """Viridis RGB (uint8, shape ``(..., 3)``) of values in [0, 1] (clipped, NaN as 0).

    Examples
    --------
    >>> colormap(np.array([0.0, 1.0])).tolist()
    [[68, 1, 84], [253, 231, 36]]
    """
    t = np.clip(np.nan_to_num(np.asarray(fraction, dtype=np.float64)), 0.0, 1.0)
    return lookup_table(DEFAULT_COLORMAP)[np.rint(t * 255).astype(np.intp)]


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


def load_qc(path: str | Path) -> dict[str, Any]:
    """A ``qc.json`` record, checked to be one."""
    record = load_json(path)
    if record.get("format") != QC_FORMAT:
        raise InputTableError(str(path), f"not a wsiproc QC file (format is not {QC_FORMAT})")
    return record
