"""Values → colours: named 256-entry RGB colormaps (no matplotlib), range choice, RGBA mapping.

Separate from :mod:`wsiproc.heatmap` so QC and reports can reuse the same colours. The anchors
are samples of the published maps; between them colours are linear.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

_EVEN9 = tuple(i / 8 for i in range(9))
_EVEN11 = tuple(i / 10 for i in range(11))

_ANCHORS: dict[str, tuple[tuple[float, ...], tuple[tuple[int, int, int], ...]]] = {
    "viridis": (
        _EVEN9,
        (
            (68, 1, 84),
            (71, 45, 123),
            (59, 82, 139),
            (44, 114, 142),
            (33, 145, 140),
            (40, 174, 128),
            (94, 201, 98),
            (173, 220, 48),
            (253, 231, 37),
        ),
    ),
    "magma": (
        _EVEN9,
        (
            (0, 0, 4),
            (28, 16, 68),
            (79, 18, 123),
            (129, 37, 129),
            (181, 54, 122),
            (229, 80, 100),
            (251, 135, 97),
            (254, 194, 135),
            (252, 253, 191),
        ),
    ),
    # Samples of Google's polynomial approximation of Turbo.
    "turbo": (
        _EVEN11,
        (
            (35, 23, 27),
            (73, 88, 221),
            (47, 158, 245),
            (39, 215, 195),
            (78, 249, 131),
            (150, 250, 80),
            (223, 220, 50),
            (255, 163, 35),
            (244, 92, 23),
            (184, 32, 8),
            (144, 13, 0),
        ),
    ),
    # MATLAB's jet is piecewise linear between these breakpoints.
    "jet": (
        (0.0, 0.125, 0.375, 0.625, 0.875, 1.0),
        ((0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)),
    ),
    "gray": ((0.0, 1.0), ((0, 0, 0), (255, 255, 255))),
}

COLORMAP_NAMES: tuple[str, ...] = tuple(_ANCHORS)
"""Colormaps :func:`lookup_table` knows, the default first."""

DEFAULT_COLORMAP = COLORMAP_NAMES[0]


def lookup_table(name: str) -> np.ndarray:
    """The 256×3 uint8 RGB table of colormap ``name``; entry 0 is the low end.

    Parameters
    ----------
    name
        One of :data:`COLORMAP_NAMES`.

    Returns
    -------
    numpy.ndarray
        Shape (256, 3), dtype uint8; a fresh array the caller may modify.

    Raises
    ------
    ConfigError
        ``name`` is not a known colormap (key ``--colormap``).

    Examples
    --------
    >>> lut = lookup_table("gray")
    >>> lut.shape, lut.dtype.name, lut[0].tolist(), lut[128].tolist(), lut[255].tolist()
    ((256, 3), 'uint8', [0, 0, 0], [128, 128, 128], [255, 255, 255])
    >>> lookup_table("viridis")[0].tolist()
    [68, 1, 84]
    """
    if name not in _ANCHORS:
        problem = f"unknown colormap {name!r}; available: {', '.join(COLORMAP_NAMES)}"
        raise ConfigError("--colormap", problem)
    positions, colours = _ANCHORS[name]
    anchors = np.asarray(colours, dtype=np.float64)
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(x, positions, anchors[:, i]) for i in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


def value_range(
    band: np.ndarray, *, vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """Colour range: given bounds, else the 1st/99th percentile of finite values (min/max if
    those coincide); (0, 1) when there are no finite values.

    Examples
    --------
    >>> value_range(np.array([np.nan, 2.0, 2.0]))
    (2.0, 2.0)
    >>> value_range(np.arange(101.0), vmax=50.0)
    (1.0, 50.0)
    """
    finite = band[np.isfinite(band)]
    if finite.size == 0:
        low, high = 0.0, 1.0
    else:
        low, high = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
        if low >= high:
            low, high = float(finite.min()), float(finite.max())
    return (low if vmin is None else float(vmin)), (high if vmax is None else float(vmax))


def colorize(band: np.ndarray, lut: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map a 2-D band through a 256×3 table between ``vmin`` and ``vmax`` to RGBA uint8.

    Values outside the range take the end colours; NaN is transparent black (alpha 0).
    A degenerate range (vmin == vmax) maps every value to the lowest colour.

    Examples
    --------
    >>> lut = np.stack([np.arange(256)] * 3, axis=1).astype(np.uint8)
    >>> colorize(np.array([[0.0, 1.0, np.nan]]), lut, 0.0, 1.0)[0].tolist()
    [[0, 0, 0, 255], [255, 255, 255, 255], [0, 0, 0, 0]]
    """
    nan = np.isnan(band)
    span = vmax - vmin
    with np.errstate(invalid="ignore", over="ignore"):
        t = (band.astype(np.float64) - vmin) / span if span > 0 else np.zeros(band.shape)
        index = np.clip(np.rint(np.nan_to_num(t, nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    rgba = np.empty((*band.shape, 4), dtype=np.uint8)
    rgba[..., :3] = lut[index]
    rgba[..., 3] = 255
    rgba[nan] = 0
    return rgba
