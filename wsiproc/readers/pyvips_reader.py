"""The pyvips reader: plain TIFF pyramids (generic TIFF, Aperio SVS) through libvips.

About 2.5x faster than OpenSlide's premultiplied-RGBA path there, pixel-identical at level 0;
usable only where the probe (:mod:`.probe`) found every level a TIFF page libvips decodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import WHITE, L0Box, over_white

PROBE_PX = 16
"""Side of the box decoded per level by :meth:`PyvipsReader.probe`: it touches one tile."""


def map_pages(path: str, level_dimensions: tuple[tuple[int, int], ...]) -> dict[int, Any]:
    """Level index -> pyvips page of exactly that size; empty if a level has no such page.

    Raises ``pyvips.Error`` when libvips cannot open the file as TIFF pages.
    """
    import pyvips

    first = pyvips.Image.new_from_file(path, access="random")
    n_pages = int(first.get("n-pages")) if "n-pages" in first.get_fields() else 1
    sizes: dict[tuple[int, int], int] = {}
    for page in range(n_pages):
        img = first if page == 0 else pyvips.Image.new_from_file(path, page=page)
        sizes.setdefault((img.width, img.height), page)
    pages: dict[int, Any] = {}
    for level, dims in enumerate(level_dimensions):
        page = sizes.get((int(dims[0]), int(dims[1])))
        if page is None:
            return {}
        img = pyvips.Image.new_from_file(path, page=page, access="random", fail_on="warning")
        if img.format != "uchar" or img.bands not in (3, 4):
            return {}
        pages[level] = img
    return pages


class PyvipsReader:
    """Reads one pyvips image per pyramid level; owns them.

    Not thread-safe; one per process (each loader opens its own ``Slide``).
    """

    name = "pyvips"

    def __init__(self, pages: dict[int, Any]) -> None:
        self._pages = pages

    def __repr__(self) -> str:
        return f"PyvipsReader(levels={len(self._pages)})"

    def probe(self, level: int) -> None:
        """Decode the first tile of ``level``; raises ``pyvips.Error`` if libvips cannot."""
        img = self._pages[level]
        img.crop(0, 0, min(PROBE_PX, img.width), min(PROBE_PX, img.height)).write_to_memory()

    def read_rgb(self, level: int, lv_x: int, lv_y: int, lv_w: int, lv_h: int) -> np.ndarray:
        """Decode one box with libvips; composite alpha onto white."""
        img = self._pages[level]
        raw = img.crop(lv_x, lv_y, lv_w, lv_h).write_to_memory()
        return over_white(np.frombuffer(raw, dtype=np.uint8).reshape(lv_h, lv_w, img.bands))

    def thumbnail_rgb(self, l0_box: L0Box, max_size: int) -> np.ndarray:
        """Shrink ``l0_box`` from the coarsest level still holding ``max_size`` pixels across it.

        A streaming pass in bounded memory, several times faster than OpenSlide's thumbnail.
        """
        level0 = self._pages[0]
        level = 0
        for i in sorted(self._pages):
            img = self._pages[i]
            box_w = l0_box.width * img.width / level0.width
            box_h = l0_box.height * img.height / level0.height
            if max(box_w, box_h) >= max_size:
                level = i
        img = self._pages[level]
        sx, sy = img.width / level0.width, img.height / level0.height
        left, top = int(l0_box.x * sx), int(l0_box.y * sy)
        width = max(1, min(img.width - left, round(l0_box.width * sx)))
        height = max(1, min(img.height - top, round(l0_box.height * sy)))
        if (left, top, width, height) != (0, 0, img.width, img.height):
            img = img.crop(left, top, width, height)
        if img.bands == 4:
            img = img.flatten(background=[WHITE, WHITE, WHITE])
        factor = max_size / max(img.width, img.height)
        if factor < 1:
            img = img.resize(factor, kernel="linear")
        raw = img.cast("uchar").write_to_memory()
        return np.frombuffer(raw, dtype=np.uint8).reshape(img.height, img.width, 3)

    def close(self) -> None:
        """Drop the page images (libvips closes the file with the last reference)."""
        self._pages = {}
