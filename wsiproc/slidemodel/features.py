"""Read a ``features.h5`` (TRIDENT's layout) for a slide model: header, grid cells, the bag.

Separate from the model so the bag is read once, straight into the tensor the model consumes
(no second copy of an (N, D) array that can be gigabytes), and so the grid reconstruction that
places each patch back on the window grid lives in one place.

Grid reconstruction: the h5 holds only the patches kept (tissue), as level-0 top-left
``coords``. The processing grid has kernel ``patch_size`` px and stride ``patch_size -
overlap`` px (TRIDENT's ``overlap`` is in processing pixels); ``scale`` (level-0 px per
processing px) is ``target_mpp / mpp_level0`` when both are known, else ``patch_size_level0 /
patch_size``. A patch at ``x`` sits in column ``rint((x / scale - proc_x0) / stride)``, where
the grid origin ``proc_x0`` is the h5's ``proc_x0`` attribute when present, else the remainder
``rint(min(x) / scale) mod stride`` (the same grid, its column 0 at the first column that fits
on the slide); likewise rows from ``y``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputTableError, one_line
from ..grid import count_windows

READ_BYTES = 16 << 20
"""Bytes of ``features`` read per h5 call: bounds the temporary buffer of a precision cast."""


@dataclass(frozen=True)
class FeatureHeader:
    """What a slide model needs from ``features.h5`` besides the bag itself.

    Sizes are in processing pixels unless named ``l0_``; ``coords`` (N, 2) int64 level-0
    ``x, y``; ``tissue`` (N,) float32, NaN when the file has no ``tissue`` dataset.
    """

    path: str
    n: int
    dim: int
    encoder: str | None
    coords: np.ndarray
    tissue: np.ndarray
    patch_size: int
    patch_size_level0: int
    stride: int
    scale: float
    level: int
    proc_mpp: float | None
    l0_width: int | None
    l0_height: int | None
    name: str | None
    proc_x0: int | None = None
    proc_y0: int | None = None

    def __repr__(self) -> str:
        return (
            f"FeatureHeader({self.path!r}, n={self.n}, dim={self.dim}, "
            f"encoder={self.encoder!r}, patch={self.patch_size}px/{self.stride}px)"
        )


def _attr(attrs: Any, key: str) -> Any:
    """An h5 attribute as a Python scalar/str, or None (also for TRIDENT's string ``'None'``)."""
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    return None if value == "None" else value


def _positive(path: str, attrs: Any, key: str, *, optional: bool = False) -> float | None:
    """A positive finite number attribute; None if absent and ``optional``."""
    value = _attr(attrs, key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        if optional and isinstance(value, float) and not math.isfinite(value):
            return None
        raise InputTableError(path, f"coords attribute {key!r} must be a positive number")
    return float(value)


def read_header(path: str | Path) -> FeatureHeader:
    """Open ``features.h5`` and read everything but the ``features`` values.

    Raises
    ------
    InputTableError
        Missing, truncated or not HDF5; a dataset or attribute missing or inconsistent.
    """
    import h5py

    where = str(path)
    try:
        with h5py.File(where, "r") as h5:
            for key in ("features", "coords"):
                if key not in h5:
                    raise InputTableError(where, f"no dataset {key!r} (not a features.h5?)")
            feats, coords_ds = h5["features"], h5["coords"]
            if feats.ndim != 2 or coords_ds.ndim != 2 or coords_ds.shape[1] != 2:
                problem = f"features {feats.shape} / coords {coords_ds.shape}: want (N, D)/(N, 2)"
                raise InputTableError(where, problem)
            n, dim = (int(s) for s in feats.shape)
            if coords_ds.shape[0] != n:
                problem = f"{coords_ds.shape[0]} coords rows but {n} feature rows"
                raise InputTableError(where, problem)
            coords = coords_ds[()].astype(np.int64, copy=False)
            tissue = np.full(n, np.nan, dtype=np.float32)
            if "tissue" in h5:
                tissue = h5["tissue"][()].astype(np.float32).reshape(-1)
                if tissue.shape != (n,):
                    raise InputTableError(where, f"tissue has {tissue.shape}, want ({n},)")
            a = coords_ds.attrs
            patch = int(_positive(where, a, "patch_size") or 0)
            patch_l0 = int(_positive(where, a, "patch_size_level0") or 0)
            overlap = int(_attr(a, "overlap") or 0)
            if not 0 <= overlap < patch:
                raise InputTableError(where, f"overlap {overlap} must be in [0, patch_size)")
            stride = int(_attr(a, "stride") or patch - overlap)  # wsiproc also writes 'stride'
            if stride != patch - overlap:
                problem = f"stride {stride} disagrees with patch_size - overlap"
                raise InputTableError(where, problem)
            mpp0 = _positive(where, a, "mpp_level0", optional=True)
            target = _positive(where, a, "target_mpp", optional=True)
            scale = target / mpp0 if mpp0 and target else patch_l0 / patch
            encoder = _attr(feats.attrs, "encoder")
            x0, y0 = _attr(a, "proc_x0"), _attr(a, "proc_y0")
            l0w, l0h = _attr(a, "level0_width"), _attr(a, "level0_height")
            return FeatureHeader(
                path=where,
                n=n,
                dim=dim,
                encoder=None if encoder is None else str(encoder),
                coords=coords,
                tissue=tissue,
                patch_size=patch,
                patch_size_level0=patch_l0,
                stride=stride,
                scale=scale,
                level=int(_attr(a, "patch_level") or 0),
                proc_mpp=target,
                l0_width=None if l0w is None else int(l0w),
                l0_height=None if l0h is None else int(l0h),
                name=_attr(a, "name"),
                proc_x0=None if x0 is None else int(x0),
                proc_y0=None if y0 is None else int(y0),
            )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputTableError(where, f"unreadable features.h5: {one_line(exc)}") from exc


def read_bag(header: FeatureHeader, dtype: Any) -> Any:
    """The (N, D) ``features`` as one torch tensor of ``dtype``, filled in row blocks.

    float32 is read by HDF5 straight into the tensor's memory; other dtypes go through a
    float32 buffer of :data:`READ_BYTES`, so peak memory is the tensor plus that buffer.

    Raises
    ------
    InputTableError
        A block cannot be read (truncated file, corrupt chunk).
    """
    import h5py
    import torch

    out = torch.empty((header.n, header.dim), dtype=dtype)
    step = max(1, READ_BYTES // max(1, header.dim * 4))
    direct = dtype == torch.float32
    target = out.numpy() if direct else None
    try:
        with h5py.File(header.path, "r") as h5:
            ds = h5["features"]
            buf = None if direct else np.empty((step, header.dim), dtype=np.float32)
            for a in range(0, header.n, step):
                b = min(header.n, a + step)
                if direct:
                    ds.read_direct(target, np.s_[a:b], np.s_[a:b])
                else:
                    ds.read_direct(buf, np.s_[a:b], np.s_[0 : b - a])
                    out[a:b].copy_(torch.from_numpy(buf[: b - a]))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputTableError(header.path, f"unreadable features: {one_line(exc)}") from exc
    return out


@dataclass(frozen=True)
class GridCells:
    """Each patch's grid cell and the grid it lives on (processing pixels, see module doc)."""

    rows: np.ndarray
    cols: np.ndarray
    grid_rows: int
    grid_cols: int
    proc_x0: int
    proc_y0: int


def grid_cells(header: FeatureHeader) -> GridCells:
    """Recover ``(row, col)`` of every patch from its level-0 coords (see the module doc).

    Examples
    --------
    >>> import numpy as np
    >>> h = FeatureHeader("f.h5", 2, 4, None, np.array([[224, 0], [448, 224]]),
    ...                   np.ones(2, np.float32), 112, 224, 112, 2.0, 0, 0.5, 1000, 500, "s")
    >>> c = grid_cells(h)
    >>> c.rows.tolist(), c.cols.tolist(), c.grid_rows, c.grid_cols
    ([0, 1], [1, 2], 2, 4)

    Raises
    ------
    InputTableError
        Two patches fall on the same cell or before the grid's origin.
    """
    s, scale = header.stride, header.scale
    proc = header.coords.astype(np.float64) / scale
    origin = []
    for axis, given in ((0, header.proc_x0), (1, header.proc_y0)):
        if given is not None:
            origin.append(given)
        elif header.n:
            origin.append(int(np.rint(proc[:, axis].min())) % s)
        else:
            origin.append(0)
    cols = np.rint((proc[:, 0] - origin[0]) / s).astype(np.int64)
    rows = np.rint((proc[:, 1] - origin[1]) / s).astype(np.int64)
    if header.n and (cols.min() < 0 or rows.min() < 0):
        raise InputTableError(header.path, "a patch lies before the grid origin proc_x0/proc_y0")
    grid_cols = int(cols.max()) + 1 if header.n else 0
    grid_rows = int(rows.max()) + 1 if header.n else 0
    if header.l0_width is not None and header.l0_height is not None:
        proc_w = int(header.l0_width / scale) - origin[0]
        proc_h = int(header.l0_height / scale) - origin[1]
        grid_cols = max(grid_cols, count_windows(proc_w, header.patch_size, s, "valid"))
        grid_rows = max(grid_rows, count_windows(proc_h, header.patch_size, s, "valid"))
    flat = rows * max(grid_cols, 1) + cols
    if len(np.unique(flat)) != header.n:
        raise InputTableError(header.path, "two patches fall on the same grid cell")
    return GridCells(rows, cols, grid_rows, grid_cols, origin[0], origin[1])
