"""Tissue painting: synthetic H&E-like slide pixels, for the demo and the test fixtures.

Kept apart from the pipeline so that real runs never depend on it, and so that every test slide
comes from one generator instead of committed binaries; the format modules of
:mod:`wsiproc.synth` write the pixels as slide files.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

#: Ruifrok & Johnston optical-density vectors (R, G, B) of the two stains and of a green marker.
HEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286], dtype=np.float32)
EOSIN_OD = np.array([0.072, 0.990, 0.105], dtype=np.float32)
PEN_OD = np.array([1.45, 0.40, 1.05], dtype=np.float32)
#: Optical densities of marker inks, by colour: each absorbs what its colour does not reflect.
INK_OD = {
    "green": PEN_OD,
    "blue": np.array([1.60, 0.90, 0.15], dtype=np.float32),
    "red": np.array([0.10, 1.60, 1.40], dtype=np.float32),
    "black": np.array([2.20, 2.20, 2.20], dtype=np.float32),
}
#: Optical density of bare glass: about (240, 240, 240).
GLASS_OD = np.float32(-math.log(240.0 / 255.0))
#: Long side of the low-resolution grid on which the tissue shapes are drawn.
SHAPE_GRID_PX = 256


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise scaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _upsample(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, separable resize of a 2-D float32 field to (height, width), centres aligned."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    c0, c1, cw = axis(width, field.shape[1])
    cols = field[:, c0] * (1 - cw) + field[:, c1] * cw  # still low-resolution rows
    r0, r1, rw = axis(height, field.shape[0])
    out = cols[r0]
    out *= (1 - rw)[:, None]
    upper = cols[r1]
    upper *= rw[:, None]
    out += upper
    return out


def _tissue_field(rng: np.random.Generator, low_shape: tuple[int, int]) -> np.ndarray:
    """Low-resolution field whose upper ~30-45 % (thresholded) forms irregular tissue pieces."""
    long_side = max(low_shape)
    field = _smooth_noise(rng, low_shape, long_side / 14) + 0.45 * _smooth_noise(
        rng, low_shape, long_side / 45
    )
    # Keep pieces off the slide edge, as a pathologist would place them.
    ramp_r = np.minimum(np.arange(low_shape[0]), np.arange(low_shape[0])[::-1]) / long_side
    ramp_c = np.minimum(np.arange(low_shape[1]), np.arange(low_shape[1])[::-1]) / long_side
    edge = np.minimum.outer(ramp_r, ramp_c).astype(np.float32)
    field -= 3.0 * np.clip(1.0 - edge / 0.08, 0.0, 1.0)
    # Lumens and tears: a few small holes inside the tissue.
    holes = _smooth_noise(rng, low_shape, 2.0)
    field -= 4.0 * np.clip(holes - 2.3, 0.0, None)
    coverage = rng.uniform(0.33, 0.42)
    field -= np.float32(np.quantile(field, 1.0 - coverage))
    return field


def _nuclei(
    rng: np.random.Generator,
    mask: np.ndarray,
    density_low: np.ndarray,
    *,
    radius_px: float,
) -> np.ndarray:
    """Hematoxylin concentration of round-ish nuclei scattered over ``mask`` (H×W float32)."""
    height, width = mask.shape
    out = np.zeros((height, width), dtype=np.float32)
    max_density = 1.0 / (3.0 * radius_px) ** 2
    n_candidates = int(max_density * height * width)
    ys = rng.integers(0, height, n_candidates)
    xs = rng.integers(0, width, n_candidates)
    ly = ys * density_low.shape[0] // height
    lx = xs * density_low.shape[1] // width
    keep = mask[ys, xs] & (rng.random(n_candidates) < density_low[ly, lx])
    ys, xs = ys[keep], xs[keep]
    radii = radius_px * rng.uniform(0.65, 1.35, ys.size)
    darkness = rng.uniform(0.7, 1.5, ys.size).astype(np.float32)
    # Stamp nuclei in a few radius classes so each class uses one vectorised offset table.
    edges = np.quantile(radii, [0.0, 0.33, 0.66, 1.0]) if ys.size else np.zeros(4)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (radii >= lo) & (radii <= hi)
        if not sel.any():
            continue
        r = float(radii[sel].mean())
        span = int(math.ceil(r + 1))
        dy, dx = np.mgrid[-span : span + 1, -span : span + 1]
        aspect = rng.uniform(0.7, 1.0)
        profile = np.clip(r + 0.5 - np.hypot(dy, dx * aspect), 0.0, 1.0).ravel()
        inside = profile > 0
        dy, dx, profile = dy.ravel()[inside], dx.ravel()[inside], profile[inside]
        yy = np.clip(ys[sel, None] + dy[None, :], 0, height - 1)
        xx = np.clip(xs[sel, None] + dx[None, :], 0, width - 1)
        out[yy, xx] = np.maximum(out[yy, xx], darkness[sel, None] * profile[None, :])
    return out


def _pen_stroke(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boolean H×W mask of one thick, wavy marker stroke across most of the slide."""
    thickness = 0.09 * height
    x0, x1 = int(0.08 * width), int(0.92 * width)
    cols = np.arange(width, dtype=np.float32)
    centre = height * (
        rng.uniform(0.3, 0.7)
        + 0.12 * np.sin(2 * np.pi * cols / width * rng.uniform(0.8, 1.6) + rng.uniform(0, 6))
    )
    rows = np.arange(height, dtype=np.float32)[:, None]
    stroke = np.abs(rows - centre[None, :]) < thickness / 2
    stroke[:, :x0] = False
    stroke[:, x1:] = False
    return stroke


def tissue_image(width: int, height: int, **options: Any) -> np.ndarray:
    """The RGB image of :func:`render_slide` (same arguments), without its ground truth.

    Examples
    --------
    >>> image = tissue_image(300, 200, seed=0)
    >>> image.shape, image.dtype.name
    ((200, 300, 3), 'uint8')
    >>> bool((tissue_image(300, 200, seed=0, tissue=False) > 225).all())
    True
    """
    return render_slide(width, height, **options)[0]


def render_slide(
    width: int,
    height: int,
    *,
    seed: int,
    tissue: bool = True,
    pen_mark: bool = False,
    nucleus_radius_px: float = 4.0,
    pen_color: str = "green",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render an H&E-like slide image (glass, pink tissue pieces, purple nuclei, optional pen)
    with its ground truth.

    Colours are composed in optical density (Beer-Lambert) from the hematoxylin and eosin stain
    vectors, so stain-based models and colour QC see realistic values. Shapes are drawn on a
    low-resolution grid and upsampled, so a 6000×4000 image takes about 1.5 s on one core.

    Parameters
    ----------
    width, height : int
        Image size in pixels.
    seed : int
        Seed of the random generator; the same arguments always give the same image.
    tissue : bool
        Draw tissue (about 33-42 % of the area). False gives bare glass only.
    pen_mark : bool
        Add one thick marker stroke, about 7 % of the image area, over tissue and glass.
    nucleus_radius_px : float
        Mean nucleus radius in pixels (4 px ≈ 4 µm at 20x, 0.5 mpp).
    pen_color : str
        Colour of the marker: a key of :data:`INK_OD` (green, blue, red, black).

    Returns
    -------
    tuple of numpy.ndarray
        ``(rgb, tissue, ink)``: the ``(height, width, 3)`` uint8 RGB image, and boolean masks of
        where tissue was drawn (ink or not) and where the marker stroke is: what a tissue
        detector must find, and what it must leave out.
    """
    if width < 1 or height < 1:
        message = f"image size must be positive, got {width}x{height}"
        raise ValueError(message)
    if pen_color not in INK_OD:
        raise ValueError(f"unknown pen colour {pen_color!r}; one of {', '.join(INK_OD)}")
    ink_od = INK_OD[pen_color]
    rng = np.random.default_rng(seed)
    scale = max(width, height) / SHAPE_GRID_PX
    low_shape = (max(2, math.ceil(height / scale)), max(2, math.ceil(width / scale)))
    od_e = np.zeros((height, width), dtype=np.float32)
    od_h = None
    mask = np.zeros((height, width), dtype=bool)
    if tissue:
        mask = _upsample(_tissue_field(rng, low_shape), height, width) > 0
        # Eosin: smooth regional variation times fine fibrous texture, built at 1/3 resolution.
        mid_shape = (max(2, height // 3), max(2, width // 3))
        regional = 0.45 + 0.12 * _smooth_noise(rng, low_shape, max(low_shape) / 20)
        eosin = _upsample(regional, *mid_shape)
        eosin *= 1.0 + 0.18 * _smooth_noise(rng, mid_shape, 0.8)
        od_e = _upsample(eosin, height, width)
        od_e *= mask
        density = np.clip(0.5 + 0.4 * _smooth_noise(rng, low_shape, max(low_shape) / 25), 0, 1)
        od_h = _nuclei(rng, mask, density, radius_px=nucleus_radius_px)
        od_h += np.float32(0.06) * mask  # faint background hematoxylin in the stroma
    pen = _pen_stroke(rng, height, width) if pen_mark else None
    grain = rng.integers(-3, 4, size=(height, width), dtype=np.int8)
    out = np.empty((height, width, 3), dtype=np.uint8)
    od = np.empty((height, width), dtype=np.float32)
    term = np.empty_like(od) if od_h is not None or pen is not None else None
    for channel in range(3):
        np.multiply(od_e, EOSIN_OD[channel], out=od)
        od += GLASS_OD
        if od_h is not None:
            od += np.multiply(od_h, HEMATOXYLIN_OD[channel], out=term)
        if pen is not None:
            od += np.multiply(pen, ink_od[channel], out=term)
        np.exp(np.negative(od, out=od), out=od)
        od *= 255.0
        od += grain
        np.clip(od, 0, 255, out=od)
        out[..., channel] = od
    ink = pen if pen is not None else np.zeros((height, width), dtype=bool)
    return out, mask, ink
