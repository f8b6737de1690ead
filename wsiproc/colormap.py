"""Values → colours: matplotlib's named colormaps as 256×3 tables, range choice, RGBA mapping.

Separate from :mod:`wsiproc.heatmap` so QC, reports and the viewer reuse the same colours. Any
name in matplotlib's registry is accepted; matplotlib is imported on the first lookup only, so
stages that never colour anything (``wsiproc infer``) never load it.
"""

from __future__ import annotations

import functools

import numpy as np

from .errors import ConfigError

DEFAULT_COLORMAP = "viridis"

COMMON_COLORMAPS: tuple[str, ...] = (DEFAULT_COLORMAP, "magma", "turbo", "jet", "gray")
"""Colormaps the viewer's menu offers first (any other matplotlib name also works)."""

COLORMAP_HELP = 'python -c "import matplotlib; print(*sorted(matplotlib.colormaps))"'
"""The command that lists every accepted colormap name, quoted in the unknown-name error."""


def is_colormap(name: str) -> bool:
    """Whether matplotlib's registry knows ``name`` (case-sensitive, like matplotlib)."""
    import matplotlib  # here, not at import: only stages that colour pay for matplotlib

    return name in matplotlib.colormaps


def check_colormap(name: str, *, key: str = "--colormap") -> None:
    """Raise :class:`~wsiproc.errors.ConfigError` naming ``key`` unless matplotlib knows
    ``name``; the one line says how to list the names it knows."""
    if not is_colormap(name):
        problem = f"unknown colormap {name!r}; any name matplotlib knows works, listed by: "
        raise ConfigError(key, problem + COLORMAP_HELP)


@functools.cache
def _table(name: str) -> np.ndarray:
    """The read-only 256×3 table of a registered colormap (cached: names are few and known)."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256), bytes=True)
    table = np.ascontiguousarray(rgba[:, :3], dtype=np.uint8)
    table.setflags(write=False)
    return table


def lookup_table(name: str) -> np.ndarray:
    """The 256×3 uint8 RGB table of matplotlib's colormap ``name``; entry 0 is the low end.

    The map is sampled once per name at 256 evenly spaced points with matplotlib's own
    conversion to bytes, so every colour equals ``matplotlib.colormaps[name](i / 255,
    bytes=True)``; heatmaps then index this table and never call matplotlib per pixel.

    Parameters
    ----------
    name
        Any name in ``matplotlib.colormaps`` (e.g. ``viridis``, ``magma_r``).

    Returns
    -------
    numpy.ndarray
        Shape (256, 3), dtype uint8; a fresh array the caller may modify.

    Raises
    ------
    ConfigError
        ``name`` is not a registered colormap (key ``--colormap``).

    Examples
    --------
    >>> lut = lookup_table("gray")
    >>> lut.shape, lut.dtype.name, lut[0].tolist(), lut[255].tolist()
    ((256, 3), 'uint8', [0, 0, 0], [255, 255, 255])
    >>> lookup_table("viridis")[0].tolist()
    [68, 1, 84]
    """
    check_colormap(name)
    return _table(name).copy()


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
