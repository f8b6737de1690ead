"""Readers of what earlier stages wrote: ``level.json``, ``windows.csv``, images, benchmark TSV.

Kept apart from :mod:`.collect` so that every way an input can be missing or malformed becomes
one :class:`~wsiproc.errors.InputTableError` naming the file, in one place.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputTableError
from ..maskfile import read_mask
from ..record import WindowsRecord
from ..table import iter_window_chunks
from . import metrics


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


def load_mask(
    path: str | Path, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(tissue, ink)`` of the level stage's mask PNG (or a user's binary mask), resized
    (nearest) to ``(height, width)`` if given; see :func:`wsiproc.tissue.decode_mask`."""
    return read_mask(path, shape)


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
    seconds = [finite_number(r.get("s")) for r in rows]
    seconds = [s for s in seconds if s is not None]
    if not seconds:
        raise InputTableError(str(path), "no 's' (seconds) value: not a Snakemake benchmark TSV")
    rss = [v for v in (finite_number(r.get("max_rss")) for r in rows) if v is not None]
    return float(np.mean(seconds)), (max(rss) if rss else None)


def finite_number(text: Any) -> float | None:
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


def summary_groups(meta: WindowsRecord) -> dict[str, slice]:
    """Summarised value → the slice of CSV output columns it averages.

    A vector output (``output_shape`` ``[C]``) summarises each column; a spatial one
    (``[C, h, w]``) summarises each base name as the per-window mean of its ``h × w`` cells,
    so memory stays ``windows × C`` whatever the spatial size.

    Examples
    --------
    >>> m = WindowsRecord(1, 1, 1, 1, None, 1.0, ("a_0_0", "a_0_1"), ("a",), (1, 1, 2))
    >>> summary_groups(m)
    {'a': slice(0, 2, None)}
    """
    if meta.is_spatial:
        size = meta.block_shape[0] * meta.block_shape[1]
        return {n: slice(i * size, (i + 1) * size) for i, n in enumerate(meta.output_names)}
    return {n: slice(i, i + 1) for i, n in enumerate(meta.outputs)}


def scan_windows(
    csv_path: str | Path,
    meta: WindowsRecord,
    *,
    raster_shape: tuple[int, int],
    l0_per_px: float,
) -> tuple[int, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Stream ``windows.csv`` in chunks: row count, summarised values, first-value raster.

    Returns ``(rows, values, sums, counts)``: ``values`` maps each :func:`summary_groups` key
    to a float32 array over windows; ``sums``/``counts`` paint the first key onto a raster of
    ``raster_shape`` pixels of ``l0_per_px`` level-0 pixels whose corner is the slide's bounds
    corner ``meta.l0_origin``, as the thumbnail's is (see
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
            boxes = chunk.boxes - np.array([*meta.l0_origin, 0, 0])  # into the thumbnail frame
            s, c = metrics.window_mean_raster(
                boxes, parts[first][-1], shape=raster_shape, l0_per_px=l0_per_px
            )
            sums += s
            counts += c
    values = {n: np.concatenate(p) if p else np.zeros(0, np.float32) for n, p in parts.items()}
    return rows, values, sums, counts
