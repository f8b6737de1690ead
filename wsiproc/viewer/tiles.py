"""Deep Zoom tiles of a slide, read on demand through :class:`wsiproc.slide.Slide`.

Separate from the heatmap overlay (:mod:`.overlay`) because it owns the slide's handles: a
small pool per slide, each lent to one thread at a time (``Slide`` is not thread-safe, while
libvips and OpenSlide decode in parallel without the GIL), so tiles are made in parallel.

Memory stays bounded whatever the slide's size: a tile reads at most about twice its size from
the pyramid level just finer than it. Where the slide has no level that close (the top of the
Deep Zoom pyramid, above the slide's coarsest level), a tile is built from the region under it
one Deep Zoom level finer, halved, recursively, in quarters once that region grows past
:data:`SPLIT_PX`: the whole slide is never in memory, and each read is a few hundred pixels
wide, never one pixel.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..slide import Slide, SlideInfo
from .deepzoom import DeepZoom, best_level

JPEG_QUALITY = 85

DIRECT_READ_MAX_FACTOR = 2.0
"""A tile is read straight from a slide level at most this many times finer than the tile;
beyond that it is built from the next Deep Zoom level."""

SPLIT_PX = 512
"""Regions of the next level wider or taller than this are built in four quarters, so no
array is larger than about 1024×1024 pixels however many levels the recursion descends."""


class SlidePool:
    """Up to ``max_handles`` open :class:`Slide` handles of one file, lent one per thread.

    Handles open lazily, at most ``max_handles``; a thread that finds them all lent waits.
    Thread-safe. Must be closed; handles lent when it closes are closed on return.

    Raises
    ------
    SlideOpenError
        From the constructor, when the file cannot be opened (the first handle opens at once).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_handles: int) -> None:
        self.path = str(path)
        self.max_handles = max(1, int(max_handles))
        self._idle: list[Slide] = [Slide(self.path)]
        self.info: SlideInfo = self._idle[0].info
        self._opened = 1
        self._closed = False
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        return f"SlidePool({self.path!r}, open={self._opened}, max_handles={self.max_handles})"

    @contextmanager
    def borrow(self) -> Iterator[Slide]:
        """Lend one handle for the duration of the ``with`` block."""
        slide = self._take()
        try:
            yield slide
        finally:
            self._give_back(slide)

    def _take(self) -> Slide:
        """An idle handle, a new one if fewer than ``max_handles`` are open, else wait."""
        with self._cond:
            while not self._idle and self._opened >= self.max_handles:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._opened += 1
        try:
            return Slide(self.path)
        except BaseException:
            with self._cond:
                self._opened -= 1
                self._cond.notify()
            raise

    def _give_back(self, slide: Slide) -> None:
        """Return a lent handle (closing it if the pool was closed meanwhile)."""
        with self._cond:
            if not self._closed:
                self._idle.append(slide)
                self._cond.notify()
                return
            self._opened -= 1
        slide.close()

    def close(self) -> None:
        """Close the idle handles now and lent ones when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
        for slide in idle:
            slide.close()


class SlideTiler:
    """RGB Deep Zoom tiles of one slide, over a :class:`SlidePool`; thread-safe."""

    def __init__(self, pool: SlidePool) -> None:
        self.pool = pool
        info = pool.info
        self.deepzoom = DeepZoom(info.width, info.height)

    def __repr__(self) -> str:
        return f"SlideTiler({self.pool.path!r}, levels={self.deepzoom.level_count})"

    def tile_rgb(self, level: int, t_col: int, t_row: int) -> np.ndarray | None:
        """Tile (``t_col``, ``t_row``) of Deep Zoom ``level`` as (h, w, 3) uint8; None if no
        such tile.

        Raises
        ------
        SlideReadError
            A region of the slide could not be decoded.
        """
        box = self.deepzoom.tile_box(level, t_col, t_row)
        if box is None:
            return None
        with self.pool.borrow() as slide:
            return self._region(
                slide, level, box.z_x, box.z_y, box.z_x + box.z_width, box.z_y + box.z_height
            )

    def _region(self, slide: Slide, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [x0, x1) × [y0, y1) of Deep Zoom ``level``: read, or built from ``level + 1``."""
        downsample = self.deepzoom.downsample(level)
        slide_level = best_level(slide.info.level_downsamples, downsample)
        factor = downsample / slide.info.level_downsamples[slide_level]
        if factor <= DIRECT_READ_MAX_FACTOR or level == self.deepzoom.level_count - 1:
            return self._read(slide, slide_level, downsample, x0, y0, x1, y1)
        child_w, child_h = self.deepzoom.level_dimensions[level + 1]
        cx0, cy0, cx1, cy1 = 2 * x0, 2 * y0, min(2 * x1, child_w), min(2 * y1, child_h)
        if cx1 - cx0 <= SPLIT_PX and cy1 - cy0 <= SPLIT_PX:
            children = self._region(slide, level + 1, cx0, cy0, cx1, cy1)
        else:
            children = np.empty((cy1 - cy0, cx1 - cx0, 3), dtype=np.uint8)
            mid_x, mid_y = min(cx0 + (x1 - x0), cx1), min(cy0 + (y1 - y0), cy1)
            for ya, yb in ((cy0, mid_y), (mid_y, cy1)):
                for xa, xb in ((cx0, mid_x), (mid_x, cx1)):
                    if xb > xa and yb > ya:
                        part = self._region(slide, level + 1, xa, ya, xb, yb)
                        children[ya - cy0 : yb - cy0, xa - cx0 : xb - cx0] = part
        return halve(children, x1 - x0, y1 - y0)

    @staticmethod
    def _read(
        slide: Slide, slide_level: int, downsample: int, x0: int, y0: int, x1: int, y1: int
    ) -> np.ndarray:
        """Read the level-0 box under [x0, x1) × [y0, y1) from ``slide_level``, resized."""
        info = slide.info
        level_ds = info.level_downsamples[slide_level]
        lv_x0, lv_y0 = x0 * downsample / level_ds, y0 * downsample / level_ds
        lv_x1 = min(x1 * downsample, info.width) / level_ds
        lv_y1 = min(y1 * downsample, info.height) / level_ds
        ix0, iy0 = math.floor(lv_x0), math.floor(lv_y0)
        ix1, iy1 = max(math.ceil(lv_x1), ix0 + 1), max(math.ceil(lv_y1), iy0 + 1)
        pixels = slide.read_region_rgb(slide_level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        size = (x1 - x0, y1 - y0)
        box = (lv_x0 - ix0, lv_y0 - iy0, lv_x1 - ix0, lv_y1 - iy0)
        if pixels.shape[1::-1] == size and box == (0, 0, *size):
            return pixels
        image = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, box=box)
        return np.asarray(image)


def halve(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Mean of 2×2 blocks down to ``width × height``; a missing last row or column (odd edge
    of the image) repeats its neighbour.

    Examples
    --------
    >>> a = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    >>> halve(a, 2, 1)[..., 0].tolist()
    [[4, 7]]
    """
    h, w = pixels.shape[:2]
    pad = ((0, 2 * height - h), (0, 2 * width - w), (0, 0))
    even = np.pad(pixels, pad, mode="edge").astype(np.uint16)
    total = even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """An RGB array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def file_signature(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, or None if it is gone: a rerun changes it, so cached
    tiles of the old file are never served."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
