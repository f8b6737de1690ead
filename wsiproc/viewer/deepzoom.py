"""Deep Zoom geometry: levels, tiles and the slide box under each tile. Pure, no pixels.

Separate from the tile renderers so the slide and its heatmap share one pyramid (the browser
lays both layers on the same level-0 frame) and the arithmetic is tested on its own. Frames,
as in openslide-python's ``deepzoom.py``: ``l0_`` level-0 pixels of the slide, ``z_`` pixels
of one Deep Zoom level, ``t_`` tile column and row within a level. Deep Zoom level 0 is
1×1 pixel; the last level is the slide at full resolution; each level halves the next one,
rounding up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

DZI_XMLNS = "http://schemas.microsoft.com/deepzoom/2008"

TILE_PX = 254
"""Tile side without overlap: with a 1-pixel overlap on both sides a tile is 256 pixels."""

OVERLAP_PX = 1
"""Pixels each tile shares with its neighbours, so the browser draws no seams."""


@dataclass(frozen=True)
class TileBox:
    """One tile: its box in Deep Zoom level pixels (overlap included) and that level's
    downsample (level-0 pixels per level pixel, a power of two)."""

    z_x: int
    z_y: int
    z_width: int
    z_height: int
    downsample: int


@dataclass(frozen=True)
class DeepZoom:
    """The Deep Zoom pyramid of an image of ``l0_width × l0_height`` level-0 pixels.

    Examples
    --------
    >>> dz = DeepZoom(1000, 600)
    >>> dz.level_count, dz.level_dimensions[-1], dz.level_dimensions[-2], dz.level_dimensions[0]
    (11, (1000, 600), (500, 300), (1, 1))
    >>> dz.tile_counts(10)
    (4, 3)
    >>> dz.tile_box(10, 0, 0), dz.tile_box(10, 3, 2)
    (TileBox(z_x=0, z_y=0, z_width=255, z_height=255, downsample=1), \
TileBox(z_x=761, z_y=507, z_width=239, z_height=93, downsample=1))
    >>> dz.tile_box(10, 4, 0) is None
    True
    """

    l0_width: int
    l0_height: int
    tile_px: int = TILE_PX
    overlap_px: int = OVERLAP_PX

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of every Deep Zoom level, from 1×1 up to full resolution."""
        size = (max(1, self.l0_width), max(1, self.l0_height))
        sizes = [size]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            sizes.append(size)
        return tuple(reversed(sizes))

    @property
    def level_count(self) -> int:
        """Number of Deep Zoom levels."""
        return len(self.level_dimensions)

    def downsample(self, level: int) -> int:
        """Level-0 pixels per pixel of Deep Zoom ``level``."""
        return 2 ** (self.level_count - 1 - level)

    def tile_counts(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles at ``level``."""
        z_width, z_height = self.level_dimensions[level]
        return math.ceil(z_width / self.tile_px), math.ceil(z_height / self.tile_px)

    def tile_box(self, level: int, t_col: int, t_row: int) -> TileBox | None:
        """The box of tile (``t_col``, ``t_row``) at ``level``, or None if there is no such tile."""
        if not 0 <= level < self.level_count:
            return None
        cols, rows = self.tile_counts(level)
        if not (0 <= t_col < cols and 0 <= t_row < rows):
            return None
        z_width, z_height = self.level_dimensions[level]
        x0, x1 = self._span(t_col, z_width)
        y0, y1 = self._span(t_row, z_height)
        return TileBox(x0, y0, x1 - x0, y1 - y0, self.downsample(level))

    def _span(self, t_index: int, z_limit: int) -> tuple[int, int]:
        """[start, end) in level pixels of tile ``t_index``, with overlap, inside the level."""
        start = t_index * self.tile_px - (self.overlap_px if t_index else 0)
        end = min((t_index + 1) * self.tile_px + self.overlap_px, z_limit)
        return start, end

    def dzi_xml(self, tile_format: str) -> str:
        """The ``.dzi`` descriptor OpenSeadragon opens, tiles in ``tile_format`` (jpeg, png)."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Image xmlns={quoteattr(DZI_XMLNS)} Format={quoteattr(tile_format)} "
            f'Overlap="{self.overlap_px}" TileSize="{self.tile_px}">'
            f'<Size Width="{self.l0_width}" Height="{self.l0_height}"/></Image>\n'
        )


def best_level(level_downsamples: tuple[float, ...], downsample: float) -> int:
    """The coarsest pyramid level no coarser than ``downsample`` (level 0 if none is).

    A level within 1% of the target counts as matching, since scanners round downsamples.

    Examples
    --------
    >>> best_level((1.0, 4.0, 16.02), 1), best_level((1.0, 4.0, 16.02), 8)
    (0, 1)
    >>> best_level((1.0, 4.0, 16.02), 16), best_level((1.0, 4.0, 16.02), 4096)
    (2, 2)
    """
    best = 0
    for level, level_downsample in enumerate(level_downsamples):
        if level_downsample <= downsample * 1.01:
            best = level
    return best
