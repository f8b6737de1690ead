"""The heatmap as Deep Zoom tiles on the slide's frame: any output, any colormap, any range.

Rendered from ``heatmap.tif`` (float32, one band per output) rather than ``heatmap_rgb.tif``
so the user can switch outputs and colormaps. Each tile samples the raster by nearest
neighbour, so a window's value fills exactly its stride cell at every zoom; only the cells
under the tile are read, from the coarsest pyramid page still as fine as the screen, so memory
stays bounded whatever the raster's size.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..colormap import colorize, value_range
from ..errors import InputTableError, one_line
from ..record import WindowsRecord
from .deepzoom import DeepZoom

RANGE_MAX_PIXELS = 1 << 22
"""The colour range is taken from the finest pyramid page of at most this many cells (every
cell for rasters up to 2048×2048, i.e. the usual case)."""


class HeatmapRaster:
    """``heatmap.tif`` of one slide, bands named by its ``windows.json``.

    Raster cell (i, j) covers level-0 pixels ``[j·cell_x, (j+1)·cell_x) × [i·cell_y, …)``
    with ``cell = stride · scale / (block · factor)``, ``factor`` being the refinement
    ``wsiproc heatmap`` applied to centre overlapping windows (``window_pixels`` in the TIFF's
    description; its shift is already in the raster as empty cells, ``docs/contracts.md``).
    Pages of the pyramid are opened once and shared: libvips images are immutable, so this
    object is thread-safe.

    Raises
    ------
    InputTableError
        The TIFF cannot be opened or its bands do not match the record's outputs.
    """

    def __init__(
        self, path: str | os.PathLike[str], record: WindowsRecord, *, rgb_path: Path | None
    ) -> None:
        import pyvips

        self.path = str(path)
        self.record = record
        self._preset = _recorded_range(rgb_path)
        pixels = self._preset.get("window_pixels")
        pixels = pixels if isinstance(pixels, dict) else {}
        self.window_pixels = (int(pixels.get("factor", 1)), int(pixels.get("shift", 0)))
        """(factor, shift) of :func:`wsiproc.heatmap.centring` the raster was made with."""
        # Window (0, 0) starts at the grid's origin (the bounds' corner on slides with bounds).
        self.origin_l0 = (
            (record.proc_x0 or 0) * record.scale,
            (record.proc_y0 or 0) * record.scale,
        )
        block_h, block_w = record.block_shape
        cell_l0 = record.stride * record.scale / self.window_pixels[0]
        self.cell_l0 = (cell_l0 / block_w, cell_l0 / block_h)
        try:
            first = pyvips.Image.new_from_file(self.path, access="random")
            n_pages = int(first.get("n-pages")) if "n-pages" in first.get_fields() else 1
            self._pages = [first] + [
                pyvips.Image.new_from_file(self.path, page=k, access="random")
                for k in range(1, n_pages)
            ]
        except pyvips.Error as exc:
            raise InputTableError(self.path, f"cannot open heatmap: {one_line(exc)}") from exc
        if first.bands != len(record.output_names) or first.format != "float":
            problem = (
                f"{first.bands} {first.format} band(s), expected {len(record.output_names)} "
                f"float bands for the outputs of {record.path}"
            )
            raise InputTableError(self.path, problem)
        self.outputs = record.output_names
        self._ranges: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        first = self._pages[0]
        return f"HeatmapRaster({self.path!r}, {first.width}x{first.height}, {self.outputs})"

    @property
    def default_output(self) -> str:
        """The output ``heatmap_rgb.tif`` shows (the workflow's choice), else the first."""
        name = self._preset.get("output")
        return name if name in self.outputs else self.outputs[0]

    @property
    def default_colormap(self) -> str | None:
        """The colormap ``heatmap_rgb.tif`` was made with, if recorded."""
        name = self._preset.get("colormap")
        return name if isinstance(name, str) else None

    def value_range(self, band: int) -> tuple[float, float]:
        """The colour range of ``band``: the one ``heatmap_rgb.tif`` used for its output (so
        both show the same colours) unless it coloured ranks, else 1st–99th percentile as
        ``wsiproc heatmap`` does."""
        with self._lock:
            if band in self._ranges:
                return self._ranges[band]
        preset = self._preset
        recorded = preset.get("vmin"), preset.get("vmax")
        # A rank colour scale (attention maps) records ranks in [0, 1], not values.
        by_value = preset.get("color_scale", "value") == "value"
        if preset.get("output") == self.outputs[band] and by_value and _finite(*recorded):
            found = (float(preset["vmin"]), float(preset["vmax"]))
        else:
            page = next(
                (p for p in self._pages if p.width * p.height <= RANGE_MAX_PIXELS),
                self._pages[-1],
            )
            found = value_range(_band_array(page, band, 0, 0, page.width, page.height))
        with self._lock:
            self._ranges[band] = found
        return found

    def tile_rgba(
        self,
        deepzoom: DeepZoom,
        level: int,
        t_col: int,
        t_row: int,
        *,
        band: int,
        lut: np.ndarray,
        vmin: float,
        vmax: float,
    ) -> np.ndarray | None:
        """Tile (``t_col``, ``t_row``) of Deep Zoom ``level`` as (h, w, 4) RGBA uint8, alpha 0
        where no window has a value; None if no such tile."""
        box = deepzoom.tile_box(level, t_col, t_row)
        if box is None:
            return None
        downsample = box.downsample
        page_index = 0
        for k in range(len(self._pages)):
            if self.cell_l0[0] * 2**k <= downsample:
                page_index = k
        page = self._pages[page_index]
        cell_x = self.cell_l0[0] * 2**page_index
        cell_y = self.cell_l0[1] * 2**page_index
        l0_x = (box.z_x + np.arange(box.z_width) + 0.5) * downsample - self.origin_l0[0]
        l0_y = (box.z_y + np.arange(box.z_height) + 0.5) * downsample - self.origin_l0[1]
        cols = np.floor(l0_x / cell_x).astype(np.int64)
        rows = np.floor(l0_y / cell_y).astype(np.int64)
        col_ok = (cols >= 0) & (cols < page.width)
        row_ok = (rows >= 0) & (rows < page.height)
        values = np.full((box.z_height, box.z_width), np.nan, dtype=np.float32)
        if col_ok.any() and row_ok.any():
            c0, c1 = int(cols[col_ok].min()), int(cols[col_ok].max()) + 1
            r0, r1 = int(rows[row_ok].min()), int(rows[row_ok].max()) + 1
            cells = _band_array(page, band, c0, r0, c1 - c0, r1 - r0)
            inner = cells[np.ix_(rows[row_ok] - r0, cols[col_ok] - c0)]
            values[np.ix_(row_ok, col_ok)] = inner
        return colorize(values, lut, vmin, vmax)


def _band_array(page: Any, band: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """One band of a box of a float pyvips page as a (height, width) float32 array."""
    raw = page.crop(x, y, width, height).extract_band(band).write_to_memory()
    return np.frombuffer(raw, dtype=np.float32).reshape(height, width)


def _finite(*values: Any) -> bool:
    """True if every value is a finite number."""
    return all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def _recorded_range(rgb_path: Path | None) -> dict[str, Any]:
    """The JSON ImageDescription of ``heatmap_rgb.tif`` (output, vmin, vmax, colormap), or {}."""
    if rgb_path is None or not rgb_path.is_file():
        return {}
    import tifffile

    try:
        with tifffile.TiffFile(rgb_path) as tif:
            data = json.loads(tif.pages[0].description or "{}")
    except (OSError, ValueError, tifffile.TiffFileError):
        return {}
    return data if isinstance(data, dict) else {}


def encode_png(rgba: np.ndarray) -> bytes:
    """An RGBA array as PNG bytes (fast compression: tiles are served, not archived)."""
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
