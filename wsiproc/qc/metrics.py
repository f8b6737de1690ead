"""Pure QC metrics on arrays: focus, marker ink, tissue area, output statistics and flags.

Kept apart from :mod:`wsiproc.qc.collect` so every number in a QC report can be tested on tiny
arrays without files. Images are ``(height, width, 3)`` uint8 RGB; masks are boolean
``(height, width)`` arrays in the same pixel frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from ..ink import ink_pixels

BLUR_THRESHOLD = 20.0
"""Default floor of :func:`blur_score` (grey levels², 0–255 scale).

The 5-point Laplacian of white noise with standard deviation σ has variance 20σ², so a score
of 20 is the pixel-to-pixel texture of 1 grey level of noise: tissue that scores below it is
featureless at thumbnail scale (out of focus or smeared). Calibrate per cohort from
``summary.tsv``.
"""

PEN_THRESHOLD = 0.002
"""Default ceiling of :func:`pen_fraction` (fraction of thumbnail pixels, 0.2 %).

On a 20 × 40 mm scan this is about 1.6 mm² of ink, a dot 1.4 mm across: any deliberate mark
exceeds it, while scattered misclassified pixels rarely add up to it.
"""

MIN_TISSUE_PERCENT = 0.5
"""Default floor of :func:`tissue_percent` (% of the thumbnail) below which a slide is empty."""

SUMMARY_KEYS = ("count", "nan", "mean", "std", "min", "p5", "median", "p95", "max")
"""Keys of each :func:`output_summary` entry, in report order."""

FLAGS = (
    "no_windows", "no_tissue", "blurry", "pen_marks", "read_errors", "upsampled", "missing_mpp",
    "no_patches", "attention_off_tissue",
)  # fmt: skip
"""Every flag of ``qc.json``: those :func:`flags` returns, in its order, then the slide model's
(``slide.json``'s ``qc_flags``, see :mod:`wsiproc.qc.stages`)."""


def grey_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB image as float64 in grey levels (0–255).

    Examples
    --------
    >>> grey_from_rgb(np.array([[[255, 255, 255]]], dtype=np.uint8))
    array([[255.]])
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def blur_score(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image over tissue pixels; higher is sharper.

    The mask is eroded by one pixel first, so the tissue/glass boundary (sharp in any focus)
    does not dominate; if erosion leaves nothing, the unreduced mask is used.

    Parameters
    ----------
    rgb : ndarray
        ``(height, width, 3)`` uint8 image, e.g. the slide thumbnail.
    mask : ndarray
        ``(height, width)`` boolean tissue mask in the same pixel frame.

    Returns
    -------
    float
        Variance in grey levels² (0–255 scale); NaN when the mask holds no tissue.

    Examples
    --------
    >>> rgb = np.zeros((4, 4, 3), np.uint8); rgb[::2, ::2] = 255
    >>> blur_score(rgb, np.ones((4, 4), bool)) > blur_score(rgb // 2, np.ones((4, 4), bool))
    True
    >>> blur_score(rgb, np.zeros((4, 4), bool))
    nan
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return math.nan
    inner = ndimage.binary_erosion(mask)
    if not inner.any():
        inner = mask
    laplacian = ndimage.laplace(grey_from_rgb(rgb))
    return float(np.var(laplacian[inner]))


def pen_fraction(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of the counted pixels (tissue or glass) that look like marker ink.

    Ink is blue, green, red or black marker, as :func:`wsiproc.ink.ink_pixels` defines it
    (its module says why H&E stays outside those colours).

    Parameters
    ----------
    rgb : ndarray
        ``(height, width, 3)`` uint8 image, e.g. the slide thumbnail.
    mask : ndarray, optional
        ``(height, width)`` boolean mask of the pixels to count (the scanned area); ``None``
        counts every pixel. Pass the scanned area, not the tissue mask: ink often lies on glass.

    Returns
    -------
    float
        Ink fraction in [0, 1]; NaN when no pixel is counted.

    Examples
    --------
    >>> rgb = np.full((4, 4, 3), 240, np.uint8); rgb[1, :] = (30, 60, 170)
    >>> pen_fraction(rgb)
    0.25
    """
    ink = ink_pixels(rgb)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        ink = ink[mask]
    if ink.size == 0:
        return math.nan
    return float(ink.mean())


def tissue_percent(mask: np.ndarray) -> float:
    """Percentage (0–100) of mask pixels that are tissue; 0 for an empty array.

    Examples
    --------
    >>> tissue_percent(np.array([[True, False], [False, False]]))
    25.0
    """
    mask = np.asarray(mask, dtype=bool)
    return float(100.0 * mask.mean()) if mask.size else 0.0


def output_summary(values: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """NaN-safe statistics of each output column over the processed windows.

    Parameters
    ----------
    values : mapping of str to ndarray
        Output name → 1-D array of per-window values.

    Returns
    -------
    dict
        Output name → ``{count, nan, mean, std, min, p5, median, p95, max}``. ``count`` is the
        number of finite values, ``nan`` the number of others; the statistics are of the finite
        values (NaN when there are none). ``std`` is the population standard deviation.

    Examples
    --------
    >>> s = output_summary({"p": np.array([0.0, 1.0, np.nan])})["p"]
    >>> s["count"], s["nan"], s["mean"], s["max"]
    (2, 1, 0.5, 1.0)
    """
    out: dict[str, dict[str, float]] = {}
    for name, column in values.items():
        column = np.asarray(column, dtype=np.float64).ravel()
        finite = column[np.isfinite(column)]
        stats: dict[str, float] = {"count": int(finite.size), "nan": int(column.size - finite.size)}
        if finite.size:
            p5, median, p95 = np.percentile(finite, [5.0, 50.0, 95.0])
            stats.update(
                mean=float(finite.mean()),
                std=float(finite.std()),
                min=float(finite.min()),
                p5=float(p5),
                median=float(median),
                p95=float(p95),
                max=float(finite.max()),
            )
        else:
            stats.update({k: math.nan for k in SUMMARY_KEYS[2:]})
        out[name] = stats
    return out


def histogram(values: np.ndarray, bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the finite values; NaN and ±inf are ignored.

    With no finite value the counts are all zero over edges ``[0, 1]``.

    Examples
    --------
    >>> counts, edges = histogram(np.array([0.0, 0.0, 1.0, np.nan]), bins=2)
    >>> counts.tolist(), edges.tolist()
    ([2, 1], [0.0, 0.5, 1.0])
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    return np.histogram(finite, bins=bins)


def window_mean_raster(
    boxes_l0: np.ndarray,
    values: np.ndarray,
    *,
    shape: tuple[int, int],
    l0_per_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint window values into a raster, averaging where windows overlap.

    Parameters
    ----------
    boxes_l0 : ndarray
        ``(n, 4)`` level-0 ``x, y, width, height`` of each window.
    values : ndarray
        ``(n,)`` value per window; non-finite values are not painted.
    shape : tuple of int
        ``(height, width)`` of the raster in its pixels (e.g. thumbnail pixels).
    l0_per_px : float
        Level-0 pixels per raster pixel (``thumbnail_scale`` of ``level.json``).

    Returns
    -------
    sums, counts : ndarray
        float64 ``shape`` arrays of summed values and of covering windows; the mean is their
        ratio where ``counts > 0``. Each box is rounded to raster pixels and covers at least one.
        Summing across calls lets a caller stream a large table in chunks.

    Examples
    --------
    >>> s, c = window_mean_raster(np.array([[0, 0, 2, 2], [2, 0, 2, 2]]), np.array([1.0, 3.0]),
    ...                           shape=(2, 2), l0_per_px=2.0)
    >>> (s / np.maximum(c, 1)).tolist()
    [[1.0, 3.0], [0.0, 0.0]]
    """
    height, width = shape
    boxes_l0 = np.asarray(boxes_l0, dtype=np.float64).reshape(-1, 4)
    values = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(values)
    boxes_l0, values = boxes_l0[keep], values[keep]
    x0 = np.clip(np.round(boxes_l0[:, 0] / l0_per_px), 0, width).astype(np.int64)
    y0 = np.clip(np.round(boxes_l0[:, 1] / l0_per_px), 0, height).astype(np.int64)
    x1 = np.round((boxes_l0[:, 0] + boxes_l0[:, 2]) / l0_per_px)
    y1 = np.round((boxes_l0[:, 1] + boxes_l0[:, 3]) / l0_per_px)
    x1 = np.clip(np.maximum(x1, x0 + 1), 0, width).astype(np.int64)
    y1 = np.clip(np.maximum(y1, y0 + 1), 0, height).astype(np.int64)
    sums = _box_sum(y0, x0, y1, x1, values, shape)
    counts = _box_sum(y0, x0, y1, x1, np.ones_like(values), shape)
    return sums, counts


def _box_sum(y0, x0, y1, x1, weights, shape: tuple[int, int]) -> np.ndarray:
    """Sum of ``weights`` over half-open boxes, via a 2-D difference array and cumulative sums."""
    diff = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.float64)
    np.add.at(diff, (y0, x0), weights)
    np.add.at(diff, (y0, x1), -weights)
    np.add.at(diff, (y1, x0), -weights)
    np.add.at(diff, (y1, x1), weights)
    out = diff.cumsum(axis=0).cumsum(axis=1)[: shape[0], : shape[1]]
    out[np.abs(out) < 1e-9] = 0.0
    return out


def flags(
    *,
    tissue_percent: float,
    windows_processed: int,
    blur_score: float,
    pen_fraction: float,
    mpp_source: str | None,
    read_error_windows: int = 0,
    upsampled: bool = False,
    min_tissue_percent: float = MIN_TISSUE_PERCENT,
    blur_threshold: float = BLUR_THRESHOLD,
    pen_threshold: float = PEN_THRESHOLD,
) -> list[str]:
    """QC flags of one slide, in the order of :data:`FLAGS`; an empty list means OK.

    ``no_windows``: no window went through the model (slide smaller than one window, no
    tissue, or every window under ``min_tissue``): a result, not an error. ``no_tissue``:
    tissue below ``min_tissue_percent`` % of the thumbnail. ``blurry``: blur score below
    ``blur_threshold``. ``pen_marks``: ink fraction above ``pen_threshold``. ``read_errors``:
    windows skipped as unreadable (``--on-read-error skip``). ``upsampled``: windows were
    enlarged from level 0 (allowed explicitly). ``missing_mpp``: the slide had no usable mpp,
    so a fallback (or none) was used; an mpp from the sample sheet is information, not a flag.
    A NaN metric (unknown) raises no flag of its own.

    Examples
    --------
    >>> flags(tissue_percent=0.0, windows_processed=0, blur_score=float("nan"),
    ...       pen_fraction=0.0, mpp_source="metadata")
    ['no_windows', 'no_tissue']
    """
    out: list[str] = []
    if windows_processed <= 0:
        out.append("no_windows")
    if math.isfinite(tissue_percent) and tissue_percent < min_tissue_percent:
        out.append("no_tissue")
    if math.isfinite(blur_score) and blur_score < blur_threshold:
        out.append("blurry")
    if math.isfinite(pen_fraction) and pen_fraction > pen_threshold:
        out.append("pen_marks")
    if read_error_windows > 0:
        out.append("read_errors")
    if upsampled:
        out.append("upsampled")
    if mpp_source in ("fallback", "none"):
        out.append("missing_mpp")
    return out
