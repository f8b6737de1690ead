"""The OpenSlide reader: every format OpenSlide opens (DICOM, MIRAX, NDPI, JPEG 2000 SVS, ...).

OpenSlide composes vendor layouts (overlapping Ventana tiles, Leica and MIRAX canvases, sparse
TIFFs) into levels and decodes codecs that the wheel's libvips lacks, at the price of a
premultiplied-RGBA path that is slower than libvips on plain TIFF pages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import L0Box, over_white


class OpenSlideReader:
    """Reads through an ``openslide.OpenSlide`` handle that its ``Slide`` owns and closes.

    Not thread-safe beyond what OpenSlide guarantees; one per process.
    """

    name = "openslide"

    def __init__(self, osr: Any) -> None:
        self._osr = osr
        self._downsamples = tuple(float(d) for d in osr.level_downsamples)

    def __repr__(self) -> str:
        return f"OpenSlideReader(levels={len(self._downsamples)})"

    def read_rgb(self, level: int, lv_x: int, lv_y: int, lv_w: int, lv_h: int) -> np.ndarray:
        """Decode one box (OpenSlide addresses it by its level-0 top-left corner)."""
        ds = self._downsamples[level]
        pil = self._osr.read_region((round(lv_x * ds), round(lv_y * ds)), level, (lv_w, lv_h))
        return over_white(np.asarray(pil))

    def thumbnail_rgb(self, l0_box: L0Box, max_size: int) -> np.ndarray:
        """openslide-python's ``get_thumbnail`` restricted to ``l0_box``: the best level for
        the downsample, read whole, composited onto white, shrunk with Lanczos."""
        from PIL import Image

        downsample = max(l0_box.width / max_size, l0_box.height / max_size)
        level = int(self._osr.get_best_level_for_downsample(downsample))
        ds = self._downsamples[level]
        lw, lh = self._osr.level_dimensions[level]
        size = (
            max(1, min(lw, math.ceil(l0_box.width / ds))),
            max(1, min(lh, math.ceil(l0_box.height / ds))),
        )
        rgba = np.asarray(self._osr.read_region((l0_box.x, l0_box.y), level, size))
        rgb = Image.fromarray(over_white(rgba))
        rgb.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        return np.asarray(rgb)

    def close(self) -> None:
        """Nothing to release: the handle belongs to the ``Slide``."""
