"""Pyramid writing shared by every synthetic slide format: the box-filtered levels, the tiled
JPEG page settings and the one place that writes TIFF pages.

Each format module only lays out its own pages and metadata on top of these, so a change to how
levels shrink or how tiles are encoded is made once for all formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..atomic import describe_os_error
from ..errors import OutputError

#: Tile width and height of the vendor formats (SVS and generic TIFF take theirs as an argument).
TILE_PX = 256

#: One TIFF page: its pixels and the tifffile keyword arguments it is written with.
Page = tuple[np.ndarray, dict[str, object]]


@dataclass(frozen=True)
class Scan:
    """What a scanner records with a slide, as the vendor writers take it.

    ``mpp``: level-0 µm per pixel; ``magnification``: objective power; ``levels``: pyramid
    levels including level 0 (None: the format's usual number; fewer where a level would get
    too small); ``quality``: JPEG quality (1-100).
    """

    mpp: float
    magnification: float
    levels: int | None = None
    quality: int = 90

    def pyramid(self, image: np.ndarray, factor: int, usual_levels: int) -> list[np.ndarray]:
        """:func:`build_pyramid` of ``image`` by ``factor`` with this scan's levels."""
        return build_pyramid(image, factor, usual_levels if self.levels is None else self.levels)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter an H×W×3 uint8 image by an integer factor, as the synthetic pyramids do.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB image.
    factor : int
        Downsampling factor (>= 1).

    Returns
    -------
    numpy.ndarray
        ``(height // factor, width // factor, 3)`` uint8; trailing rows and columns that do not
        fill a whole box are dropped.

    Examples
    --------
    >>> downsample(np.zeros((9, 10, 3), np.uint8), 4).shape
    (2, 2, 3)
    """
    if factor < 1:
        message = f"downsampling factor must be >= 1, got {factor}"
        raise ValueError(message)
    height, width = image.shape[0] // factor, image.shape[1] // factor
    cropped = Image.fromarray(np.ascontiguousarray(image[: height * factor, : width * factor]))
    return np.asarray(cropped.reduce(factor))


def build_pyramid(
    image: np.ndarray,
    factor: int,
    levels: int | None,
    *,
    min_side: int | None = None,
    fits: int = 0,
) -> list[np.ndarray]:
    """``image`` and its box-filtered reductions by ``factor`` each.

    A level is reduced further only while the pyramid has fewer than ``levels`` levels (None:
    no limit), its shorter side is at least ``min_side`` pixels (default ``4 * factor``) and its
    longer side exceeds ``fits`` pixels. The formats differ only in these three stops.

    Examples
    --------
    >>> [p.shape for p in build_pyramid(np.zeros((64, 40, 3), np.uint8), 2, 3)]
    [(64, 40, 3), (32, 20, 3), (16, 10, 3)]
    >>> len(build_pyramid(np.zeros((600, 600, 3), np.uint8), 2, None, min_side=4, fits=256))
    3
    """
    min_side = 4 * factor if min_side is None else min_side
    out = [image]
    while (
        (levels is None or len(out) < levels)
        and min(out[-1].shape[:2]) >= min_side
        and max(out[-1].shape[:2]) > fits
    ):
        out.append(downsample(out[-1], factor))
    return out


def tiled(quality: int, *, tile: int = TILE_PX, compression: str | int = "jpeg") -> dict:
    """tifffile keywords of a tiled page: square ``tile``-px tiles, ``compression`` at
    ``quality`` (JPEG quality, or imagecodecs' JPEG 2000 level)."""
    return {"tile": (tile, tile), "compression": compression, "compressionargs": {"level": quality}}


def write_tiff_pages(path: Path, pages: list[Page]) -> None:
    """Write one RGB TIFF page per (array, tifffile keyword arguments); OS errors → OutputError."""
    try:
        with tifffile.TiffWriter(path) as writer:
            for array, kwargs in pages:
                writer.write(array, photometric="rgb", metadata=None, **kwargs)
    except OSError as exc:
        raise OutputError(str(path), describe_os_error(exc)) from exc
