"""Write ``features.h5`` files in TRIDENT's layout with h5py, for the slide-model tests.

Used until (and beside) real ``wsiproc features`` runs: the layout is the one issue 15 fixes,
written here from its description, not from wsiproc's writer.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def grid_coords(
    rows: np.ndarray, cols: np.ndarray, *, stride_px: int, scale: float, proc_x0: int = 0,
    proc_y0: int = 0,
) -> np.ndarray:  # fmt: skip
    """(N, 2) int64 level-0 top-left ``x, y`` of grid cells, as ``Grid.l0_boxes`` places them."""
    x = np.rint((proc_x0 + np.asarray(cols) * stride_px) * scale)
    y = np.rint((proc_y0 + np.asarray(rows) * stride_px) * scale)
    return np.stack([x, y], axis=1).astype(np.int64)


def write_features_h5(
    path: Path,
    features: np.ndarray,
    coords: np.ndarray,
    *,
    tissue: np.ndarray | None = None,
    patch_size: int = 224,
    scale: float = 2.0,
    overlap: int = 0,
    level0_width: int = 10_000,
    level0_height: int = 8_000,
    mpp_level0: float = 0.25,
    encoder: str = "test-encoder",
    name: str = "slide",
    patch_level: int = 0,
) -> Path:
    """Write a features.h5 of ``features`` (N, D) at ``coords`` (N, 2) level-0 ``x, y``."""
    n = len(features)
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("features", data=np.asarray(features, dtype=np.float32))
        ds.attrs["encoder"] = encoder
        ds.attrs["encoder_sha256"] = "0" * 64
        ds.attrs["precision"] = "fp32"
        ds.attrs["wsiproc"] = "test"
        c = h5.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(n, 2))
        target_mpp = mpp_level0 * scale
        c.attrs.update(
            {
                "patch_size": patch_size,
                "patch_size_level0": round(patch_size * scale),
                "level0_magnification": 40.0,
                "target_magnification": 40.0 / scale,
                "overlap": overlap,
                "name": name,
                "level0_width": level0_width,
                "level0_height": level0_height,
                "patch_level": patch_level,
                "mpp_level0": mpp_level0,
                "target_mpp": target_mpp,
                "tile_size_um": patch_size * target_mpp,
            }
        )
        if tissue is None:
            tissue = np.ones(n, dtype=np.float32)
        h5.create_dataset("tissue", data=np.asarray(tissue, dtype=np.float32))
    return path
