"""Marker ink and dark debris on a slide thumbnail: what tissue detection must leave out.

Pathologists circle regions with blue, green, black or red markers, on the glass and over the
tissue. Ink is saturated (so a saturation threshold calls it tissue) and dark, and a model run
on it produces confident nonsense that dominates heatmaps and patient tables. H&E occupies a
narrow band of colours, purple to pink (hue 240–345°, red >= green), which every ink below
avoids by hue, saturation or darkness. Pure functions on ``(h, w, 3)`` uint8 RGB arrays.
"""

from __future__ import annotations

import numpy as np

BLUE_INK_HUE_DEG = (185.0, 238.0)
"""Hue range of blue marker ink. H&E mixtures keep red >= green, which puts hematoxylin and
eosin at hue >= 240° (purple to pink); blue ink has green > red, hue below about 235° even
over eosin (about 234° there)."""
BLUE_INK_MIN_SATURATION = 0.4
"""Blue ink is strongly saturated; pale bluish glass tints stay far below 0.4."""
GREEN_INK_HUE_DEG = (75.0, 185.0)
"""Hue range of green marker ink; H&E produces no green, and brown pigment stays below 60°."""
GREEN_INK_MIN_SATURATION = 0.25
"""Saturation floor of green ink; scanner colour casts on white glass are below 0.05."""
RED_INK_HUE_DEG = (345.0, 20.0)
"""Hue range of red marker ink (wrapping through 0°). Eosin is pink-magenta, 290–340°."""
RED_INK_MIN_SATURATION = 0.6
"""Red ink is far more saturated than eosin, which stays below about 0.5 even where dense."""
INK_MIN_VALUE = 0.15
"""Coloured ink must be brighter than this, so near-black pixels count only as black ink."""
BLACK_INK_MAX_VALUE = 0.2
"""Black ink and dark debris are darker than this (51/255); dense tissue and folds stay above
about 0.3."""
INK_MARGIN_PX = 1
"""Ink pixels grown by this many thumbnail pixels: a stroke's blurred rim (ink mixed with
tissue or glass colour) is ink too."""


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """``rgb.max(axis=-1)`` of an (..., 3) array, several times faster: numpy reduces a last
    axis of 3 element by element, but compares whole planes in one pass.

    Examples
    --------
    >>> channel_max(np.array([[1, 5, 3]], np.uint8)).tolist(), channel_min(np.array([[4, 2, 6]]))
    ([5], array([2]))
    """
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_min(rgb: np.ndarray) -> np.ndarray:
    """``rgb.min(axis=-1)`` of an (..., 3) array; see :func:`channel_max`."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def hsv_from_rgb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees, 0–360), saturation and value (0–1) of an RGB uint8 image.

    Examples
    --------
    >>> h, s, v = hsv_from_rgb(np.array([[[0, 0, 255]]], dtype=np.uint8))
    >>> float(h[0, 0]), float(s[0, 0]), float(v[0, 0])
    (240.0, 1.0, 1.0)
    """
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = channel_max(rgb)
    chroma = value - channel_min(rgb)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(value > 0, chroma / value, 0.0)
        safe = np.where(chroma > 0, chroma, 1.0)
        hue = np.where(
            value == r,
            ((g - b) / safe) % 6.0,
            np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
        )
    hue = np.where(chroma > 0, hue * 60.0, 0.0)
    return hue, saturation, value


def ink_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like blue, green, red or black marker ink (or dark debris).

    Examples
    --------
    >>> ink_pixels(np.array([[[30, 60, 170], [90, 60, 150], [240, 240, 240], [218, 49, 60],
    ...                       [200, 120, 180]]], np.uint8))
    array([[ True, False, False,  True, False]])
    """
    rgb = np.asarray(rgb)
    top = channel_max(rgb)
    # Hue only where coloured ink is possible (bright and saturated enough): glass and pale
    # tissue, most of a thumbnail, never need it. Same arithmetic per pixel, same answer.
    chroma = top - channel_min(rgb)
    min_sat = min(BLUE_INK_MIN_SATURATION, GREEN_INK_MIN_SATURATION, RED_INK_MIN_SATURATION)
    candidate = (top >= INK_MIN_VALUE * 255 - 1) & (chroma >= min_sat * top - 1)
    out = np.zeros(rgb.shape[:-1], dtype=bool)
    if candidate.any():
        hue, sat, val = hsv_from_rgb(rgb[candidate][:, None, :])
        hue, sat, val = hue[:, 0], sat[:, 0], val[:, 0]
        bright = val >= INK_MIN_VALUE
        blue = (hue >= BLUE_INK_HUE_DEG[0]) & (hue < BLUE_INK_HUE_DEG[1])
        blue &= sat >= BLUE_INK_MIN_SATURATION
        green = (hue >= GREEN_INK_HUE_DEG[0]) & (hue < GREEN_INK_HUE_DEG[1])
        green &= sat >= GREEN_INK_MIN_SATURATION
        red = (hue >= RED_INK_HUE_DEG[0]) | (hue < RED_INK_HUE_DEG[1])
        red &= sat >= RED_INK_MIN_SATURATION
        out[candidate] = (blue | green | red) & bright
    # val < 0.2 with val = top / 255, as hsv_from_rgb computes it
    out |= (top.astype(np.float64) / 255.0) < BLACK_INK_MAX_VALUE
    return out


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """:func:`ink_pixels` grown by :data:`INK_MARGIN_PX`: the area tissue detection excludes.

    Examples
    --------
    >>> img = np.full((5, 5, 3), 240, np.uint8); img[2, 2] = (30, 60, 170)
    >>> int(ink_mask(img).sum())
    9
    """
    ink = ink_pixels(rgb)
    for _ in range(INK_MARGIN_PX if ink.any() else 0):
        ink = dilate3x3(ink)
    return ink


def dilate3x3(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by a 3x3 square, outside the image counting as False: what
    ``scipy.ndimage.binary_dilation(mask, np.ones((3, 3)))`` gives, without importing scipy.

    Examples
    --------
    >>> m = np.zeros((3, 4), bool); m[0, 0] = True
    >>> dilate3x3(m).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    """
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def erode3x3(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3x3 square, outside the image counting as False (so the border
    row and column are always False), as ``scipy.ndimage.binary_erosion`` with its default
    ``border_value=0``.

    Examples
    --------
    >>> erode3x3(np.ones((3, 4), bool)).astype(int).tolist()
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out
