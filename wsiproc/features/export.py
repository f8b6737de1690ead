"""Thin exporters from the features file to the layouts STAMP, slideflow and CLAM read.

Each reads the canonical file (:mod:`.h5file`) and writes its tool's files atomically under
``<out_dir>/<tool>/``; nothing here recomputes an embedding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, atomic_write
from ..errors import InputTableError, OutputError

EXPORTS = ("stamp", "slideflow", "clam")


@dataclass(frozen=True)
class FeaturesFile:
    """A features file read whole: the arrays and the attributes of its two main datasets."""

    path: Path
    features: np.ndarray
    coords: np.ndarray
    tissue: np.ndarray
    coords_attrs: dict[str, Any]
    features_attrs: dict[str, Any]

    @property
    def name(self) -> str:
        """The slide id the file was written for (``coords.attrs['name']``)."""
        return str(self.coords_attrs["name"])

    def number(self, key: str) -> float:
        """A numeric ``coords`` attribute, refused when the slide had no value for it."""
        value = self.coords_attrs.get(key)
        if value is None or isinstance(value, (str, bytes)):
            raise InputTableError(str(self.path), f"coords attribute {key!r} is {value!r}")
        return float(value)


def _plain(value: Any) -> Any:
    """numpy scalars and byte strings as plain Python values."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def read_features(path: str | Path) -> FeaturesFile:
    """Read a features file.

    Raises
    ------
    InputTableError
        Not an HDF5 file, or a dataset or attribute of the layout is missing.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("features", "coords", "tissue") if k not in fh]
            if missing:
                raise InputTableError(str(path), f"not a features file: no dataset {missing[0]!r}")
            ca = {k: _plain(v) for k, v in fh["coords"].attrs.items()}
            fa = {k: _plain(v) for k, v in fh["features"].attrs.items()}
            for key in ("name", "patch_size", "patch_size_level0", "mpp_level0"):
                if key not in ca:
                    raise InputTableError(str(path), f"coords attribute {key!r} is missing")
            return FeaturesFile(
                path,
                fh["features"][:],
                fh["coords"][:],
                fh["tissue"][:],
                ca,
                fa,
            )
    except OSError as exc:
        raise InputTableError(str(path), f"not a readable HDF5 file: {exc}") from exc


def _save_tensor(target: Path, array: np.ndarray) -> None:
    """``torch.save`` of a float32 tensor, atomically (loads with ``weights_only=True``)."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), tmp)


def export_stamp(ff: FeaturesFile, out_dir: Path) -> list[Path]:
    """STAMP: ``<slide>.h5`` with ``feats`` (N, D) and ``coords`` in µm (top-left, level 0).

    File attributes ``unit='um'``, ``tile_size_um``, ``tile_size_px``, ``extractor`` and
    ``feat_type='tile'``: what STAMP's ``get_coords`` needs to read the coordinates.
    """
    import h5py

    mpp0 = ff.number("mpp_level0")
    target = out_dir / "stamp" / f"{ff.name}.h5"
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("feats", data=ff.features.astype(np.float32))
        fh.create_dataset("coords", data=(ff.coords * mpp0).astype(np.float32))
        fh.attrs["unit"] = "um"
        fh.attrs["tile_size_um"] = ff.number("patch_size_level0") * mpp0
        fh.attrs["tile_size_px"] = int(ff.number("patch_size"))
        fh.attrs["extractor"] = str(ff.features_attrs.get("encoder", "unknown"))
        fh.attrs["feat_type"] = "tile"
    return [target]


def export_slideflow(ff: FeaturesFile, out_dir: Path) -> list[Path]:
    """slideflow: ``<slide>.pt`` (float32 tensor), ``<slide>.index.npz`` (``arr_0`` = patch
    centres, level-0 px) and the directory's ``bags_config.json``.

    Raises
    ------
    OutputError
        The directory's ``bags_config.json`` describes other features (another encoder or
        patch size): bags of one directory must be alike.
    """
    folder = out_dir / "slideflow"
    pt = folder / f"{ff.name}.pt"
    index = folder / f"{ff.name}.index.npz"
    config_path = folder / "bags_config.json"
    side_l0 = ff.number("patch_size_level0")
    config = {
        "extractor": {"class": str(ff.features_attrs.get("encoder", "unknown")), "kwargs": {}},
        "normalizer": None,
        "num_features": int(ff.features.shape[1]),
        "tile_px": int(ff.number("patch_size")),
        "tile_um": round(side_l0 * ff.number("mpp_level0"), 3),
    }
    if config_path.exists():
        try:
            existing = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if existing != config:
            problem = f"holds other bags ({existing}); export {ff.path} to another directory"
            raise OutputError(str(config_path), problem)
    _save_tensor(pt, ff.features)
    centres = ff.coords + np.int64(side_l0) // 2
    with atomic_path(index) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, centres.astype(np.int64))
    with atomic_write(config_path) as fh:
        json.dump(config, fh, indent=1)
    return [pt, index, config_path]


def export_clam(ff: FeaturesFile, out_dir: Path) -> list[Path]:
    """CLAM: ``pt_files/<slide>.pt`` (float32 (N, D) tensor, what its MIL training reads)
    and ``h5_files/<slide>.h5`` (``features`` + int32 ``coords``, what its heatmaps read)."""
    import h5py

    folder = out_dir / "clam"
    pt = folder / "pt_files" / f"{ff.name}.pt"
    h5 = folder / "h5_files" / f"{ff.name}.h5"
    _save_tensor(pt, ff.features)
    with atomic_path(h5) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("features", data=ff.features.astype(np.float32))
        coords = fh.create_dataset("coords", data=ff.coords.astype(np.int32))
        for key in ("patch_size", "patch_level", "name"):
            coords.attrs[key] = ff.coords_attrs[key]
    return [pt, h5]


EXPORTERS: dict[str, Callable[[FeaturesFile, Path], list[Path]]] = {
    "stamp": export_stamp,
    "slideflow": export_slideflow,
    "clam": export_clam,
}


def export_features(path: str | Path, tools: list[str], out_dir: str | Path) -> list[Path]:
    """Write each tool's files for one features file under ``out_dir``; return them."""
    ff = read_features(path)
    written: list[Path] = []
    for tool in tools:
        written += EXPORTERS[tool](ff, Path(out_dir))
    return written
