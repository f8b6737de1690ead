"""The reader protocol: what ``Slide`` needs from a pixel decoder, and nothing more.

Kept apart from the implementations so that ``Slide`` and the probe depend only on this
contract: a reader decodes boxes that lie inside one pyramid level and makes thumbnails of a
level-0 box; ``Slide`` does the clipping, the white fill and the error translation once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

WHITE = 255


@dataclass(frozen=True)
class L0Box:
    """A rectangle in level-0 pixels: ``x, y`` top-left corner, ``width, height`` size."""

    x: int
    y: int
    width: int
    height: int


class Reader(Protocol):
    """Decodes pixels of one open slide; owned and closed by its ``Slide``.

    ``name`` is what run records and fingerprints store (``pyvips`` or ``openslide``).
    """

    name: str

    def read_rgb(self, level: int, lv_x: int, lv_y: int, lv_w: int, lv_h: int) -> np.ndarray:
        """The box as (lv_h, lv_w, 3) uint8 RGB; the box lies inside the level.

        Transparent slide area is composited onto white. Decoder errors propagate as they are
        (``Slide`` translates them into one-line errors naming the file and region).
        """
        ...

    def thumbnail_rgb(self, l0_box: L0Box, max_size: int) -> np.ndarray:
        """``l0_box`` shrunk so that its longer side is at most ``max_size`` px, RGB uint8."""
        ...

    def close(self) -> None:
        """Release what the reader opened itself."""
        ...


def over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA onto white; pass RGB through.

    Examples
    --------
    >>> over_white(np.array([[[0, 0, 0, 0], [10, 20, 30, 255]]], np.uint8)).tolist()
    [[[255, 255, 255], [10, 20, 30]]]
    """
    if rgba.shape[2] == 3:
        return rgba
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + WHITE * (255 - a) + 127) // 255).astype(np.uint8)
