"""Windows CSV → rasters on the stride grid → pyramidal TIFFs (pyvips) with resolution tags.

Separate from the CLI so tests and QC can assemble the same rasters. Raster pixels are stride
cells: pixel ``(row, col)`` is window ``(row, col)``; a spatial output (C×h×w per window) puts
an h×w block there instead, so its raster pixel is ``stride / h`` processing pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyvips
import tifffile

from .atomic import atomic_path
from .errors import InputTableError, OutputError, one_line
from .table import META_COLUMNS, read_header

CHUNK_ROWS = 65_536
"""CSV rows parsed at a time: bounds memory whatever the number of windows."""

TILE_PX = 256
MODES = ("window", "average")
_BIGTIFF_BYTES = 2**31
"""Rasters larger than this are written as BigTIFF (classic TIFF offsets are 32-bit)."""


@dataclass(frozen=True)
class WindowsMeta:
    """What the heatmap needs from ``windows.json``; ``kernel_size``/``stride`` in proc px.

    ``outputs`` are the CSV value columns in order; ``output_names`` the C base names;
    ``output_shape`` is ``(C,)`` or ``(C, h, w)``.
    """

    path: str
    grid_rows: int
    grid_cols: int
    kernel_size: int
    stride: int
    proc_mpp: float | None
    scale: float
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_shape: tuple[int, ...]

    @property
    def block_shape(self) -> tuple[int, int]:
        """(height, width) in raster pixels of one window's map; (1, 1) for vector outputs."""
        if len(self.output_shape) == 3:
            return self.output_shape[1], self.output_shape[2]
        return 1, 1

    @property
    def is_spatial(self) -> bool:
        """Whether each window's output is a C×h×w map rather than a C-vector."""
        return len(self.output_shape) == 3


def read_meta(path: str | Path) -> WindowsMeta:
    """Read and check the keys of ``windows.json`` that the heatmap uses.

    Raises
    ------
    InputTableError
        The file is missing, not JSON, lacks a key, or its outputs are inconsistent.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputTableError(str(path), f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputTableError(str(path), "not a windows JSON object")

    def positive_int(key: str) -> int:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputTableError(str(path), f"key {key!r} must be a positive integer")
        return value

    def names(key: str) -> tuple[str, ...]:
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputTableError(str(path), f"key {key!r} must be a list of names")
        return tuple(value)

    grid_rows, grid_cols = positive_int("grid_rows"), positive_int("grid_cols")
    kernel_size, stride = positive_int("kernel_size"), positive_int("stride")
    proc_mpp = data.get("proc_mpp")
    if proc_mpp is not None and (
        isinstance(proc_mpp, bool) or not isinstance(proc_mpp, (int, float)) or proc_mpp <= 0
    ):
        raise InputTableError(str(path), "key 'proc_mpp' must be a positive number or null")
    scale = data.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise InputTableError(str(path), "key 'scale' must be a positive number")
    shape = data.get("output_shape")
    if (
        not isinstance(shape, list)
        or len(shape) not in (1, 3)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise InputTableError(str(path), "key 'output_shape' must be [C] or [C, h, w]")
    meta = WindowsMeta(
        path=str(path),
        grid_rows=grid_rows,
        grid_cols=grid_cols,
        kernel_size=kernel_size,
        stride=stride,
        proc_mpp=None if proc_mpp is None else float(proc_mpp),
        scale=float(scale),
        outputs=names("outputs"),
        output_names=names("output_names"),
        output_shape=tuple(shape),
    )
    if len(meta.output_names) != shape[0] or len(meta.outputs) != math.prod(shape):
        problem = (
            f"{len(meta.outputs)} outputs and {len(meta.output_names)} output names "
            f"do not match output_shape {shape}"
        )
        raise InputTableError(str(path), problem)
    return meta


@dataclass(frozen=True)
class WindowChunk:
    """Up to :data:`CHUNK_ROWS` CSV rows: grid cells, values (n, len(outputs)) float64.

    ``boxes`` (n, 4: level-0 x, y, width, height) and ``tissue`` are read only on request.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    boxes: np.ndarray | None = None
    tissue: np.ndarray | None = None


def iter_window_chunks(
    csv_path: str | Path,
    meta: WindowsMeta,
    *,
    with_geometry: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[WindowChunk]:
    """Stream a windows CSV in chunks, checked against ``meta``.

    Values are parsed as float64 (pandas' float32 path parses to float64 and casts too), so
    callers can both cast to float32 exactly and re-print the CSV's 7 digits.

    Raises
    ------
    InputTableError
        Missing or malformed CSV, columns other than ``meta.outputs``, or a window outside the
        grid.
    """
    path = str(csv_path)
    head = read_header(path)
    if tuple(head[len(META_COLUMNS) :]) != meta.outputs:
        problem = f"output columns differ from 'outputs' in {meta.path} (another run?)"
        raise InputTableError(path, problem)
    dtypes: dict[str, type] = {"row": np.int64, "col": np.int64}
    dtypes.update({name: np.float64 for name in meta.outputs})
    if with_geometry:
        dtypes.update({"x": np.int64, "y": np.int64, "width": np.int64, "height": np.int64})
        dtypes["tissue"] = np.float64
    try:
        reader = pd.read_csv(
            path, usecols=list(dtypes), dtype=dtypes, chunksize=chunk_rows, engine="c"
        )
        with reader:
            for frame in reader:
                values = frame[list(meta.outputs)].to_numpy(np.float64)
                values = values.reshape(len(frame), len(meta.outputs))
                boxes = tissue = None
                if with_geometry:
                    boxes = frame[["x", "y", "width", "height"]].to_numpy()
                    tissue = frame["tissue"].to_numpy()
                rows, cols = frame["row"].to_numpy(), frame["col"].to_numpy()
                chunk = WindowChunk(rows, cols, values, boxes=boxes, tissue=tissue)
                _check_cells(chunk, meta, path)
                yield chunk
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        problem = f"malformed windows CSV: {one_line(exc)}"
        raise InputTableError(path, problem) from exc


def _check_cells(chunk: WindowChunk, meta: WindowsMeta, path: str) -> None:
    """Raise InputTableError for a window outside the grid of ``meta``."""
    bad = (chunk.rows < 0) | (chunk.rows >= meta.grid_rows)
    bad |= (chunk.cols < 0) | (chunk.cols >= meta.grid_cols)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problem = (
            f"window r{chunk.rows[i]}_c{chunk.cols[i]} is outside the "
            f"{meta.grid_rows}x{meta.grid_cols} grid of {meta.path}"
        )
        raise InputTableError(path, problem)


class WindowGrid:
    """Window values placed on the stride grid, as one float32 raster; one per CSV.

    ``values`` has shape (grid_rows·h, grid_cols·w, C) and is NaN where no window was added.
    Memory is that array plus one bool per window; not thread-safe.
    """

    def __init__(self, meta: WindowsMeta, *, source: str) -> None:
        self.meta = meta
        self.source = source
        h, w = meta.block_shape
        shape = (meta.grid_rows * h, meta.grid_cols * w, meta.output_shape[0])
        self.values = np.full(shape, np.nan, dtype=np.float32)
        self._seen = np.zeros((meta.grid_rows, meta.grid_cols), dtype=bool)
        self.window_count = 0

    def __repr__(self) -> str:
        rows, cols, bands = self.values.shape
        return (
            f"WindowGrid({self.source!r}, raster={rows}x{cols}x{bands}, "
            f"windows={self.window_count})"
        )

    def add(self, chunk: WindowChunk) -> None:
        """Place each window's values (cast to float32) at its cell; a repeated cell is an error."""
        n = len(chunk.rows)
        if n == 0:
            return
        flat = chunk.rows * self.meta.grid_cols + chunk.cols
        seen = self._seen.reshape(-1)
        if seen[flat].any() or len(np.unique(flat)) != n:
            problem = "a window (row, col) appears twice: a patient CSV of several slides?"
            raise InputTableError(self.source, problem)
        seen[flat] = True
        h, w = self.meta.block_shape
        blocks = chunk.values.astype(np.float32).reshape(n, -1, h, w).transpose(0, 2, 3, 1)
        ii = chunk.rows[:, None, None] * h + np.arange(h)[None, :, None]
        jj = chunk.cols[:, None, None] * w + np.arange(w)[None, None, :]
        self.values[ii, jj] = blocks
        self.window_count += n


def window_span(kernel_size: int, stride: int) -> int:
    """Stride cells one window covers along each axis: ``ceil(kernel_size / stride)``.

    Examples
    --------
    >>> window_span(224, 224), window_span(224, 112), window_span(224, 100)
    (1, 2, 3)
    """
    return -(-kernel_size // stride)


def average_windows(values: np.ndarray, span: int) -> np.ndarray:
    """Mean over every window covering each stride cell, from a window-mode raster.

    Window ``(r, c)`` covers cells ``r..r+span-1`` × ``c..c+span-1``, so the result has
    ``span - 1`` more rows and columns; NaN inputs are skipped, uncovered cells are NaN.

    Examples
    --------
    >>> v = np.array([[[1.0], [3.0]]], dtype=np.float32)  # 1×2 windows, one band
    >>> average_windows(v, 2)[..., 0]
    array([[1., 2., 3.],
           [1., 2., 3.]], dtype=float32)
    """
    rows, cols, bands = values.shape
    shape = (rows + span - 1, cols + span - 1, bands)
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.int32)
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    for di in range(span):
        for dj in range(span):
            total[di : di + rows, dj : dj + cols] += filled
            count[di : di + rows, dj : dj + cols] += present
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean[count == 0] = np.nan
    return mean.astype(np.float32)


def pixel_size_um(meta: WindowsMeta) -> tuple[float, float] | None:
    """(x, y) size in µm of one raster pixel: ``stride · proc_mpp / (w, h)``; None if mpp unknown.

    Examples
    --------
    >>> m = WindowsMeta("w.json", 2, 3, 224, 112, 0.5, 1.0, ("p",), ("p",), (1,))
    >>> pixel_size_um(m)
    (56.0, 56.0)
    """
    if meta.proc_mpp is None:
        return None
    h, w = meta.block_shape
    cell_um = meta.stride * meta.proc_mpp
    return cell_um / w, cell_um / h


def write_tiff(
    path: str | Path,
    raster: np.ndarray,
    *,
    pixel_um: tuple[float, float] | None,
    description: str,
) -> None:
    """Write an (H, W, bands) float32 or RGBA uint8 raster as a tiled, pyramidal TIFF, atomically.

    Tiles are 256 px, compression deflate, pyramid levels halve until one tile holds the
    image. Float levels keep the top-left pixel of each 2×2 block (``region_shrink=nearest``),
    so they hold real window values and a missing window does not blank its neighbours; RGBA
    levels are 2×2 means. ``pixel_um`` (x, y) becomes XResolution/YResolution in px/cm of
    level 0; None writes ResolutionUnit NONE so no reader invents a physical size.
    ``description`` goes into the first page's ImageDescription.

    Raises
    ------
    OutputError
        The file could not be written.
    """
    raster = np.ascontiguousarray(raster)
    height, width, bands = raster.shape
    if raster.dtype == np.uint8:
        fmt, interpretation, shrink = "uchar", "srgb", "mean"
    else:
        fmt, interpretation, shrink = "float", "multiband", "nearest"
    image = pyvips.Image.new_from_memory(raster.data, width, height, bands, fmt)
    image = image.copy(interpretation=interpretation)
    image.set_type(pyvips.GValue.gstr_type, "image-description", description)
    options: dict[str, object] = {}
    if pixel_um is not None:
        # pyvips takes px/mm and stores px/cm with resunit="cm".
        options.update(xres=1000.0 / pixel_um[0], yres=1000.0 / pixel_um[1], resunit="cm")
    with atomic_path(path) as tmp:
        try:
            image.tiffsave(
                str(tmp),
                tile=True,
                tile_width=TILE_PX,
                tile_height=TILE_PX,
                pyramid=True,
                region_shrink=shrink,
                compression="deflate",
                bigtiff=raster.nbytes > _BIGTIFF_BYTES,
                **options,
            )
        except pyvips.Error as exc:
            raise OutputError(str(path), _vips_problem(exc, tmp)) from exc
        if pixel_um is None:
            with tifffile.TiffFile(tmp, mode="r+b") as tif:
                for page in tif.pages:
                    page.tags["ResolutionUnit"].overwrite(1)


def _vips_problem(exc: pyvips.Error, tmp: Path) -> str:
    """First libvips reason (with its system error) for a failed save, without the temp path."""
    lines = [line.replace(f"{tmp}: ", "") for line in (exc.detail or "").splitlines()]
    lines = [line for line in lines if line.strip()] or [exc.message]
    if len(lines) > 1 and lines[1].startswith("system error:"):
        return f"cannot write TIFF: {lines[0]} ({lines[1]})"
    return f"cannot write TIFF: {lines[0]}"
