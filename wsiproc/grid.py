"""Pure geometry of the window grid, with ``torch.nn.Conv2d`` semantics.

Frames: ``proc_`` pixels at the processing resolution (where kernel and stride count),
``l0_`` level-0 pixels, ``lv_`` pixels of the level read; ``row``/``col`` index grid cells.
Window (row, col) covers ``proc_x in [proc_x0 + col*stride, proc_x0 + col*stride + kernel)``,
likewise for y; the grid origin ``(proc_x0, proc_y0)`` is (0, 0) except on slides with bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

BORDERS = ("valid", "pad")


def count_windows(size_px: int, kernel_px: int, stride_px: int, border: str) -> int:
    """Number of window positions along one axis.

    ``valid``: only windows fully inside (Conv2d without padding). ``pad``: enough windows to
    reach every pixel (every pixel when stride <= kernel); the last ones extend past the edge,
    and none starts past it.

    Examples
    --------
    >>> count_windows(10, 3, 2, "valid"), count_windows(10, 3, 2, "pad")
    (4, 5)
    >>> count_windows(2, 3, 2, "valid"), count_windows(2, 3, 2, "pad")
    (0, 1)
    """
    if size_px <= 0:
        return 0
    if border == "valid":
        return 0 if size_px < kernel_px else (size_px - kernel_px) // stride_px + 1
    if size_px <= kernel_px:
        return 1
    # Enough windows to reach the last pixel, but none starting past the edge (stride > kernel).
    return min(math.ceil((size_px - kernel_px) / stride_px) + 1, math.ceil(size_px / stride_px))


@dataclass(frozen=True)
class Grid:
    """The windows of one slide at the processing resolution.

    ``scale`` is level-0 pixels per processing pixel. ``proc_width``/``proc_height`` is the
    area the windows cover, starting at processing pixel ``(proc_x0, proc_y0)`` (a slide's
    bounds; (0, 0) for the whole slide).
    """

    proc_width: int
    proc_height: int
    kernel_px: int
    stride_px: int
    border: str
    scale: float
    proc_x0: int = 0
    proc_y0: int = 0

    def __post_init__(self) -> None:
        if self.kernel_px < 1:
            raise ConfigError("kernel-size", f"must be >= 1, got {self.kernel_px}")
        if self.stride_px < 1:
            raise ConfigError("stride", f"must be >= 1, got {self.stride_px}")
        if self.border not in BORDERS:
            raise ConfigError("border", f"must be one of {', '.join(BORDERS)}, got {self.border!r}")

    @property
    def rows(self) -> int:
        """Number of window rows."""
        return count_windows(self.proc_height, self.kernel_px, self.stride_px, self.border)

    @property
    def cols(self) -> int:
        """Number of window columns."""
        return count_windows(self.proc_width, self.kernel_px, self.stride_px, self.border)

    def l0_boxes(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n, 4) int64 level-0 ``x, y, width, height`` of windows; no drift across the slide.

        Examples
        --------
        >>> g = Grid(100, 100, 10, 5, "valid", 2.5)
        >>> g.l0_boxes(np.array([0, 1]), np.array([3, 0])).tolist()
        [[38, 0, 25, 25], [0, 12, 25, 25]]
        >>> Grid(100, 100, 10, 5, "valid", 2.5, proc_x0=4).l0_boxes(np.array([0]), np.array([0]))
        array([[10,  0, 25, 25]])
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        side = round(self.kernel_px * self.scale)
        out = np.empty((len(rows), 4), dtype=np.int64)
        # rint rounds half to even on the exact double product, like Python's round().
        out[:, 0] = np.rint((self.proc_x0 + cols * self.stride_px) * self.scale)
        out[:, 1] = np.rint((self.proc_y0 + rows * self.stride_px) * self.scale)
        out[:, 2] = side
        out[:, 3] = side
        return out


@dataclass(frozen=True)
class Chunk:
    """A block of grid cells read with one region read: rows [row0, row0+n_rows), cols likewise."""

    index: int
    row0: int
    col0: int
    n_rows: int
    n_cols: int

    def proc_box(self, grid: Grid) -> tuple[int, int, int, int]:
        """Processing-pixel ``x, y, width, height`` covering every window of the chunk."""
        s, k = grid.stride_px, grid.kernel_px
        x0, y0 = grid.proc_x0 + self.col0 * s, grid.proc_y0 + self.row0 * s
        return x0, y0, (self.n_cols - 1) * s + k, (self.n_rows - 1) * s + k


def cells_per_chunk(grid: Grid, chunk_px: int, tile_px: int | None = None) -> int:
    """Cells along one side of a chunk so that it spans about ``chunk_px`` processing pixels.

    With ``tile_px`` (the slide's tile size, when windows are read without resizing), prefer
    the largest count down to half the default whose span ``cells * stride`` is a whole number
    of tiles: chunks then start on tile boundaries and no tile is decoded twice.

    Examples
    --------
    >>> cells_per_chunk(Grid(5000, 5000, 224, 224, "valid", 1.0), 2048)
    9
    >>> cells_per_chunk(Grid(5000, 5000, 224, 224, "valid", 1.0), 2048, tile_px=256)
    8
    """
    n = max(1, (chunk_px - grid.kernel_px) // grid.stride_px + 1)
    if tile_px:
        for cells in range(n, max(1, n // 2) - 1, -1):
            if (cells * grid.stride_px) % tile_px == 0:
                return cells
    return n


def plan_chunks(grid: Grid, chunk_px: int, tile_px: int | None = None) -> list[Chunk]:
    """Split the grid into chunks in (row, col) order; their union is every cell exactly once.

    Examples
    --------
    >>> g = Grid(100, 50, 10, 10, "valid", 1.0)
    >>> [(c.row0, c.col0, c.n_rows, c.n_cols) for c in plan_chunks(g, 40)]
    [(0, 0, 4, 4), (0, 4, 4, 4), (0, 8, 4, 2), (4, 0, 1, 4), (4, 4, 1, 4), (4, 8, 1, 2)]
    """
    n = cells_per_chunk(grid, chunk_px, tile_px)
    chunks = []
    for row0 in range(0, grid.rows, n):
        for col0 in range(0, grid.cols, n):
            chunks.append(
                Chunk(
                    index=len(chunks),
                    row0=row0,
                    col0=col0,
                    n_rows=min(n, grid.rows - row0),
                    n_cols=min(n, grid.cols - col0),
                )
            )
    return chunks
