"""Windows → QuPath-importable GeoJSON: one ``tile`` Feature per window, streamed to disk.

Separate from :mod:`wsiproc.heatmap` because it works in level-0 pixels and text, not rasters;
features are written chunk by chunk so memory does not grow with the number of windows.
Coordinates are in QuPath's frame: level-0 pixels counted from the slide's bounds corner
(QuPath crops a slide with ``openslide.bounds-*`` to them), plain level 0 without bounds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from .atomic import atomic_write

VALUE_FORMAT = "%.7g"
"""Measurements keep the CSV's digits (see :data:`wsiproc.table.VALUE_FORMAT`)."""

TISSUE_FORMAT = "%.4f"

_HEAD = '{"type": "FeatureCollection", "features": [\n'
_TAIL = "\n]}\n"


def format_features(
    rows: np.ndarray,
    cols: np.ndarray,
    boxes: np.ndarray,
    tissue: np.ndarray,
    values: np.ndarray,
    *,
    names: Sequence[str],
) -> list[str]:
    """One GeoJSON Feature text per window, without separators.

    Parameters
    ----------
    rows, cols
        Grid cells of the windows, shape (n,).
    boxes
        (n, 4) level-0 ``x, y, width, height`` in pixels.
    tissue
        Tissue fraction of each window, shape (n,).
    values
        (n, len(names)) model outputs; NaN or infinite values are left out of
        ``measurements`` (JSON has no NaN; QuPath reads a missing measurement as NaN).
    names
        Measurement names, the CSV output columns.

    Returns
    -------
    list of str
        Features whose Polygon is the closed box ring in level-0 pixels and whose properties
        are ``objectType: tile``, ``name: r{row}_c{col}`` and ``measurements``.

    Examples
    --------
    >>> import json
    >>> f = format_features(np.array([1]), np.array([2]), np.array([[10, 20, 5, 5]]),
    ...                     np.array([0.5]), np.array([[0.25, np.nan]]), names=["p", "q"])
    >>> json.loads(f[0])["geometry"]["coordinates"]
    [[[10, 20], [15, 20], [15, 25], [10, 25], [10, 20]]]
    >>> json.loads(f[0])["properties"]
    {'objectType': 'tile', 'name': 'r1_c2', 'measurements': {'p': 0.25, 'tissue': 0.5}}
    """
    keys = [_json_string(n) for n in names]
    out = []
    for i in range(len(rows)):
        x, y, w, h = (int(v) for v in boxes[i])
        ring = f"[[{x}, {y}], [{x + w}, {y}], [{x + w}, {y + h}], [{x}, {y + h}], [{x}, {y}]]"
        row_values = values[i].tolist()
        measures = [
            f"{key}: {VALUE_FORMAT % v}"
            for key, v in zip(keys, row_values, strict=True)
            if math.isfinite(v)
        ]
        if math.isfinite(tissue[i]):
            measures.append(f'"tissue": {TISSUE_FORMAT % tissue[i]}')
        out.append(
            '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ['
            f'{ring}]}}, "properties": {{"objectType": "tile", "name": "r{rows[i]}_c{cols[i]}", '
            f'"measurements": {{{", ".join(measures)}}}}}}}'
        )
    return out


def _json_string(text: str) -> str:
    """``text`` as a JSON string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'


class FeatureWriter:
    """Streams a FeatureCollection to ``path``; the file appears atomically on success.

    Use as a context manager: entering opens a temporary file beside ``path``; a clean exit
    closes the collection and renames it onto ``path``, an exception removes it. Owns its file
    handle; not thread-safe. ``l0_origin`` (the bounds corner, level-0 ``x, y``) is
    subtracted from every box, so features land where QuPath shows the tissue.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        names: Sequence[str],
        l0_origin: tuple[int, int] = (0, 0),
    ) -> None:
        self.path = Path(path)
        self.names = tuple(names)
        self.l0_origin = (int(l0_origin[0]), int(l0_origin[1]))
        self.feature_count = 0
        self._context = atomic_write(self.path)
        self._fh: IO[str] | None = None

    def __repr__(self) -> str:
        return f"FeatureWriter({str(self.path)!r}, features={self.feature_count})"

    def __enter__(self) -> FeatureWriter:
        self._fh = self._context.__enter__()
        self._fh.write(_HEAD)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is None and self._fh is not None:
            self._fh.write(_TAIL)
        self._fh = None
        return self._context.__exit__(exc_type, exc, tb)

    def write(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        boxes: np.ndarray,
        tissue: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Append one Feature per window (arguments as in :func:`format_features`; ``boxes`` in
        level-0 pixels of the slide, shifted here by ``l0_origin``)."""
        if self._fh is None:
            raise RuntimeError("FeatureWriter.write outside its with-block")
        if self.l0_origin != (0, 0):
            boxes = np.asarray(boxes) - np.array([*self.l0_origin, 0, 0])
        features = format_features(rows, cols, boxes, tissue, values, names=self.names)
        if not features:
            return
        if self.feature_count:
            self._fh.write(",\n")
        self._fh.write(",\n".join(features))
        self.feature_count += len(features)
