"""The features file: TRIDENT's layout, assembled from the engine's checkpoint, written atomically.

``features`` float32 (N, D) and ``coords`` int64 (N, 2) (level-0 top-left x, y, rows in grid
order), ``tissue`` float32 (N,), TRIDENT's and CLAM's attributes on ``coords`` and the
encoder's on ``features``. Assembly reads only the checkpoint, so a resumed run writes the same
datasets as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..grid import Grid
from ..level import LevelPlan
from ..slide import SlideInfo
from ..stream.assemble import grid_ordered_bands
from ..stream.checkpoint import Checkpoint
from ..stream.messages import GroupTask

CHUNK_ROWS = 256
"""Rows per HDF5 chunk: about 1 MB at D = 1024, small enough to read a few patches cheaply."""


def _attr(value: Any) -> Any:
    """An attribute value as TRIDENT stores it (``None`` becomes the string ``'None'``)."""
    return "None" if value is None else value


def _round_number(value: float) -> float | int:
    """``20.0`` -> 20; otherwise rounded to 4 decimals (magnifications from mpp)."""
    value = round(float(value), 4)
    return int(value) if value.is_integer() else value


def coords_attrs(*, grid: Grid, plan: LevelPlan, info: SlideInfo, slide_id: str) -> dict[str, Any]:
    """The attributes of ``coords``: TRIDENT's, CLAM's ``patch_level`` and physical sizes.

    ``patch_size_level0`` is the level-0 side of every patch from the plan's real scale (as
    its ``coords`` were computed), never from nominal magnifications. ``level0_magnification``
    is the slide's objective power, else 10 / mpp (10 µm/px per 1x); ``target_magnification``
    is level-0's divided by the scale. Unknowns are ``'None'``, as TRIDENT writes them.
    """
    mpp0 = plan.proc_mpp / plan.scale if plan.proc_mpp is not None else None
    mag0: float | None = info.objective_power
    if mag0 is None and mpp0 is not None:
        mag0 = 10.0 / mpp0
    patch_px = grid.kernel_px
    return {
        "patch_size": patch_px,
        "patch_size_level0": round(patch_px * plan.scale),
        "level0_magnification": _attr(None if mag0 is None else _round_number(mag0)),
        "target_magnification": _attr(None if mag0 is None else _round_number(mag0 / plan.scale)),
        "overlap": patch_px - grid.stride_px,
        "name": slide_id,
        "level0_width": info.width,
        "level0_height": info.height,
        "patch_level": plan.level,
        "mpp_level0": _attr(mpp0),
        "target_mpp": _attr(plan.proc_mpp),
        "tile_size_um": _attr(None if plan.proc_mpp is None else patch_px * plan.proc_mpp),
        "stride": grid.stride_px,
    }


def features_attrs(encoder: Any) -> dict[str, Any]:
    """The attributes of ``features``: which encoder, which weights, which precision."""
    spec = encoder.spec
    attrs: dict[str, Any] = {
        "encoder": spec.name,
        "encoder_source": encoder.source,
        "encoder_sha256": encoder.sha256,
        "precision": encoder.precision,
        "input_size": spec.input_size,
        "pooling": spec.pooling,
        "wsiproc": __version__,
    }
    if spec.timm is not None:  # architecture, kwargs, method: what turned the weights into D
        attrs["timm"] = json.dumps(spec.to_dict()["timm"], sort_keys=True)
    return attrs


def assemble_h5(
    out: str,
    *,
    grid: Grid,
    plan: LevelPlan,
    info: SlideInfo,
    ckpt: Checkpoint,
    groups: Sequence[GroupTask],
    tissue: np.ndarray,
    encoder: Any,
    slide_id: str,
) -> int:
    """Write the features file from the checkpoint; return N (0 is a valid, empty file).

    Patches are appended band by band in grid order (:func:`grid_ordered_bands`, as for the
    CSV): memory holds about one band of chunks, never the whole (N, D) array.
    """
    import h5py

    width = ckpt.width
    n = 0
    with atomic_path(out) as tmp, h5py.File(tmp, "w", track_order=True) as fh:
        feats = fh.create_dataset(
            "features",
            shape=(0, width),
            maxshape=(None, width),
            dtype="<f4",
            chunks=(CHUNK_ROWS, width),
        )
        coords = fh.create_dataset(
            "coords", shape=(0, 2), maxshape=(None, 2), dtype="<i8", chunks=(CHUNK_ROWS, 2)
        )
        tis = fh.create_dataset(
            "tissue", shape=(0,), maxshape=(None,), dtype="<f4", chunks=(CHUNK_ROWS,)
        )
        for key, value in coords_attrs(grid=grid, plan=plan, info=info, slide_id=slide_id).items():
            coords.attrs[key] = value
        if encoder is not None:
            for key, value in features_attrs(encoder).items():
                feats.attrs[key] = value
        for rows, cols, values in grid_ordered_bands(ckpt, groups):
            m = len(rows)
            for ds in (feats, coords, tis):
                ds.resize(n + m, axis=0)
            feats[n : n + m] = values
            coords[n : n + m] = grid.l0_boxes(rows, cols)[:, :2]
            tis[n : n + m] = tissue[rows, cols].astype(np.float32)
            n += m
    return n
