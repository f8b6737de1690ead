"""The CSV contract of ``windows.csv``: column names and order, value formatting, concatenation.

Every other module (heatmap, QC, workflow tests) relies on these names; they are defined here
only. Rows are sorted by ``row`` then ``col``; ``x, y, width, height`` are level-0 pixels.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_write
from .errors import InputTableError, one_line

if TYPE_CHECKING:
    from .record import WindowsRecord

META_COLUMNS: tuple[str, ...] = (
    "patient",
    "slide",
    "row",
    "col",
    "x",
    "y",
    "width",
    "height",
    "level",
    "tissue",
)
"""Columns that precede the model outputs, in this order."""

VALUE_FORMAT = "%.7g"
"""printf format of model outputs: enough digits to round-trip float32 closely, short text."""

TISSUE_FORMAT = "%.4f"

CHUNK_ROWS = 65_536
"""CSV rows parsed at a time by :func:`iter_window_chunks`: bounds memory whatever the
number of windows."""


def header(output_names: Sequence[str]) -> list[str]:
    """Full header: the metadata columns then one column per model output.

    Examples
    --------
    >>> header(["mean_r"])[-2:]
    ['tissue', 'mean_r']
    """
    return [*META_COLUMNS, *output_names]


def spatial_output_names(names: Sequence[str], height: int, width: int) -> list[str]:
    """Column names of a spatial (C×h×w) output: ``<name>_<i>_<j>``, C-major, row-major.

    Examples
    --------
    >>> spatial_output_names(["p"], 1, 2)
    ['p_0_0', 'p_0_1']
    """
    return [f"{n}_{i}_{j}" for n in names for i in range(height) for j in range(width)]


def format_rows(
    patient: str,
    slide: str,
    rows: np.ndarray,
    cols: np.ndarray,
    boxes: np.ndarray,
    level: int,
    tissue: np.ndarray,
    values: np.ndarray,
) -> str:
    """Format windows as CSV text lines (``\\n`` terminated).

    ``boxes`` is an (n, 4) int array of level-0 ``x, y, width, height``; ``values`` is (n, C).
    """
    out = []
    prefix = f"{_csv_field(patient)},{_csv_field(slide)},"
    for i in range(len(rows)):
        x, y, w, h = boxes[i]
        vals = ",".join(VALUE_FORMAT % v for v in values[i])
        out.append(
            f"{prefix}{rows[i]},{cols[i]},{x},{y},{w},{h},{level},"
            f"{TISSUE_FORMAT % tissue[i]}{',' if vals else ''}{vals}\n"
        )
    return "".join(out)


def _csv_field(text: str) -> str:
    """Quote a text field only if CSV needs it."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def read_header(path: str | Path) -> list[str]:
    """Header of a windows CSV, checked against the contract."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            first = next(csv.reader(fh), None)
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc
    if first is None or tuple(first[: len(META_COLUMNS)]) != META_COLUMNS:
        raise InputTableError(str(path), "not a wsiproc windows CSV (unexpected header)")
    return first


def concat_csvs(paths: Iterable[str | Path], out: str | Path) -> int:
    """Concatenate windows CSVs of one patient into ``out`` (one header), atomically.

    Inputs must share the same header. Returns the number of data rows written. Streams line
    by line, so memory does not grow with the number of windows.
    """
    paths = [Path(p) for p in paths]
    n = 0
    expected: list[str] | None = None
    with atomic_write(out) as dst:
        for path in paths:
            head = read_header(path)
            if expected is None:
                expected = head
                dst.write(",".join(head) + "\n")
            elif head != expected:
                raise InputTableError(
                    str(path), f"columns differ from {paths[0]} (different model?)"
                )
            with open(path, encoding="utf-8", newline="") as src:
                next(src)
                for line in src:
                    dst.write(line)
                    n += 1
    return n


@dataclass(frozen=True)
class WindowChunk:
    """Up to :data:`CHUNK_ROWS` CSV rows: grid cells, values (n, len(outputs)) float64.

    ``boxes`` (n, 4: level-0 x, y, width, height) and ``tissue`` are read only on request.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    boxes: np.ndarray | None = None
    tissue: np.ndarray | None = None


def iter_window_chunks(
    csv_path: str | Path,
    meta: WindowsRecord,
    *,
    with_geometry: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[WindowChunk]:
    """Stream a windows CSV in chunks, checked against ``meta``.

    Values are parsed as float64 (pandas' float32 path parses to float64 and casts too), so
    callers can both cast to float32 exactly and re-print the CSV's 7 digits.

    Raises
    ------
    InputTableError
        Missing or malformed CSV, columns other than ``meta.outputs``, or a window outside the
        grid.
    """
    path = str(csv_path)
    head = read_header(path)
    if tuple(head[len(META_COLUMNS) :]) != meta.outputs:
        problem = f"output columns differ from 'outputs' in {meta.path} (another run?)"
        raise InputTableError(path, problem)
    dtypes: dict[str, type] = {"row": np.int64, "col": np.int64}
    dtypes.update({name: np.float64 for name in meta.outputs})
    if with_geometry:
        dtypes.update({"x": np.int64, "y": np.int64, "width": np.int64, "height": np.int64})
        dtypes["tissue"] = np.float64
    import pandas as pd  # here: the engine formats rows without paying pandas' import

    try:
        reader = pd.read_csv(
            path, usecols=list(dtypes), dtype=dtypes, chunksize=chunk_rows, engine="c"
        )
        with reader:
            for frame in reader:
                values = frame[list(meta.outputs)].to_numpy(np.float64)
                values = values.reshape(len(frame), len(meta.outputs))
                boxes = tissue = None
                if with_geometry:
                    boxes = frame[["x", "y", "width", "height"]].to_numpy()
                    tissue = frame["tissue"].to_numpy()
                rows, cols = frame["row"].to_numpy(), frame["col"].to_numpy()
                chunk = WindowChunk(rows, cols, values, boxes=boxes, tissue=tissue)
                _check_cells(chunk, meta, path)
                yield chunk
    except (ValueError, OSError) as exc:  # pandas.errors.ParserError is a ValueError
        problem = f"malformed windows CSV: {one_line(exc)}"
        raise InputTableError(path, problem) from exc


def _check_cells(chunk: WindowChunk, meta: WindowsRecord, path: str) -> None:
    """Raise InputTableError for a window outside the grid of ``meta``."""
    bad = (chunk.rows < 0) | (chunk.rows >= meta.grid_rows)
    bad |= (chunk.cols < 0) | (chunk.cols >= meta.grid_cols)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problem = (
            f"window r{chunk.rows[i]}_c{chunk.cols[i]} is outside the "
            f"{meta.grid_rows}x{meta.grid_cols} grid of {meta.path}"
        )
        raise InputTableError(path, problem)
