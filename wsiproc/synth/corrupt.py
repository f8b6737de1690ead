"""Damage for the failure tests: one JPEG tile of a synthetic slide zeroed in place.

Apart from the writers because it edits a finished file rather than laying one out.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import tifffile


def corrupt_tile(
    path: str | os.PathLike[str], *, level: int = 0, tile_index: int | None = None
) -> tuple[int, int, int, int]:
    """Zero every byte of one JPEG tile of a tiled TIFF in place, so decoding it fails.

    The TIFF structure stays valid, so the slide still opens; only reads that touch the tile
    fail (OpenSlide raises ``OpenSlideError``; pyvips raises ``pyvips.Error`` at any
    ``fail_on`` setting, because libjpeg's "Not a JPEG file" is fatal).

    Parameters
    ----------
    path : path-like
        A tiled JPEG TIFF or SVS, modified in place.
    level : int
        Pyramid level, counting tiled pages from the largest (associated images are skipped).
    tile_index : int, optional
        Row-major tile index within the level; default the tile in the middle.

    Returns
    -------
    tuple of int
        ``(x, y, width, height)`` of the tile in level-0 pixels, clipped to the image.

    Raises
    ------
    ValueError
        ``level`` or ``tile_index`` is out of range, or the level is not JPEG-compressed.
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        tiled = [page for page in tif.pages if page.is_tiled]
        if level >= len(tiled):
            message = f"{path}: level {level} out of range (0..{len(tiled) - 1})"
            raise ValueError(message)
        base, page = tiled[0], tiled[level]
        if page.compression != tifffile.COMPRESSION.JPEG:
            message = f"{path}: level {level} is not JPEG-compressed"
            raise ValueError(message)
        cols = math.ceil(page.imagewidth / page.tilewidth)
        rows = math.ceil(page.imagelength / page.tilelength)
        if tile_index is None:
            tile_index = (rows // 2) * cols + cols // 2
        if not 0 <= tile_index < rows * cols:
            message = f"{path}: tile {tile_index} out of range (0..{rows * cols - 1})"
            raise ValueError(message)
        offset = int(page.dataoffsets[tile_index])
        count = int(page.databytecounts[tile_index])
        row, col = divmod(tile_index, cols)
        lv_x, lv_y = col * page.tilewidth, row * page.tilelength
        lv_w = min(page.tilewidth, page.imagewidth - lv_x)
        lv_h = min(page.tilelength, page.imagelength - lv_y)
        down_x = base.imagewidth / page.imagewidth
        down_y = base.imagelength / page.imagelength
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(count))
    return (
        round(lv_x * down_x),
        round(lv_y * down_y),
        min(round(lv_w * down_x), base.imagewidth - round(lv_x * down_x)),
        min(round(lv_h * down_y), base.imagelength - round(lv_y * down_y)),
    )
