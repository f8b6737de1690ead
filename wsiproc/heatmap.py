"""Windows CSV → rasters on the stride grid → pyramidal TIFFs (pyvips) with resolution tags.

Separate from the CLI so tests and QC can assemble the same rasters. Raster pixels are stride
cells: pixel ``(row, col)`` is window ``(row, col)``; a spatial output (C×h×w per window) puts
an h×w block there instead, so its raster pixel is ``stride / h`` processing pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyvips
import tifffile

from .atomic import atomic_path
from .errors import InputTableError, OutputError
from .record import WindowsRecord
from .table import WindowChunk

TILE_PX = 256
MODES = ("window", "average")
_BIGTIFF_BYTES = 2**31
"""Rasters larger than this are written as BigTIFF (classic TIFF offsets are 32-bit)."""


class WindowGrid:
    """Window values placed on the stride grid, as one float32 raster; one per CSV.

    ``values`` has shape (grid_rows·h, grid_cols·w, C) and is NaN where no window was added.
    Memory is that array plus one bool per window; not thread-safe.
    """

    def __init__(self, meta: WindowsRecord, *, source: str) -> None:
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


def centring(kernel_size: int, stride: int) -> tuple[int, int]:
    """``(factor, shift)`` that put each window's value on the stride cell centred on it.

    Window ``(r, c)`` covers ``[c·stride, c·stride + kernel)``; its centre is
    ``(kernel − stride) / 2`` past its stride cell. The raster is refined ``factor`` times
    (1, or 2 when that offset is not a whole number of cells) and shifted ``shift`` refined
    pixels, so every value lands within half a raster pixel of its window's centre, and
    memory grows at most 4x.

    Examples
    --------
    >>> centring(224, 224), centring(224, 112), centring(64, 32), centring(224, 100)
    ((1, 0), (2, 1), (2, 1), (2, 1))
    >>> centring(300, 100)
    (1, 1)
    """
    offset = (kernel_size - stride) / 2
    if offset <= 0:
        return 1, 0
    if offset % stride == 0:
        return 1, int(offset // stride)
    return 2, round(offset / (stride / 2))


def centre_on_windows(values: np.ndarray, factor: int, shift: int) -> np.ndarray:
    """The window-mode raster refined ``factor`` times and shifted ``shift`` pixels down and
    right (NaN where no window lands): see :func:`centring`.

    Examples
    --------
    >>> v = np.array([[[1.0], [2.0]]], dtype=np.float32)  # one row of two windows
    >>> centre_on_windows(v, 2, 1)[..., 0]
    array([[nan, nan, nan, nan, nan],
           [nan,  1.,  1.,  2.,  2.],
           [nan,  1.,  1.,  2.,  2.]], dtype=float32)
    """
    if factor == 1 and shift == 0:
        return values
    rows, cols, bands = values.shape
    out = np.full((rows * factor + shift, cols * factor + shift, bands), np.nan, np.float32)
    fine = np.repeat(np.repeat(values, factor, axis=0), factor, axis=1)
    out[shift:, shift:] = fine
    return out


COLOR_SCALES = ("value", "rank")
"""How the RGB TIFF maps values to colours: the values themselves, or their per-slide rank."""


def percentile_rank(band: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each value's rank among the finite ``reference`` values, in (0, 1]; NaN stays NaN.

    The share of reference values <= each value (``scipy.stats.percentileofscore`` with
    ``kind="weak"``, over 100), as CLAM colours attention: a slide's map then spans the whole
    colour scale however peaked its scores are. The float TIFF keeps the raw values.

    Examples
    --------
    >>> percentile_rank(np.array([[1.0, 5.0, np.nan]]), np.array([1.0, 2.0, 5.0, 9.0]))
    array([[0.25, 0.75,  nan]], dtype=float32)
    """
    ref = np.sort(reference[np.isfinite(reference)].astype(np.float64))
    out = np.full(band.shape, np.nan, dtype=np.float32)
    if ref.size:
        finite = np.isfinite(band)
        out[finite] = np.searchsorted(ref, band[finite], side="right") / ref.size
    return out


def pixel_size_um(meta: WindowsRecord) -> tuple[float, float] | None:
    """(x, y) size in µm of one raster pixel: ``stride · proc_mpp / (w, h)``; None if mpp unknown.

    Examples
    --------
    >>> m = WindowsRecord(2, 3, 224, 112, 0.5, 1.0, ("p",), ("p",), (1,))
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
