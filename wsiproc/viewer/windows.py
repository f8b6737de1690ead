"""Rows of ``windows.csv`` found in place: the window under a click, the windows in a view.

The CSV is sorted by ``row`` then ``col`` (``docs/contracts.md``), so a binary search over
byte offsets finds any window in about 30 seeks without reading the file into memory or
building an index: a click answers at once even for a million windows.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from typing import BinaryIO

from ..record import WindowsRecord
from ..table import META_COLUMNS, read_header

_ROW = META_COLUMNS.index("row")
_COL = META_COLUMNS.index("col")
_BOX = tuple(META_COLUMNS.index(k) for k in ("x", "y", "width", "height"))


class WindowTable:
    """One slide's ``windows.csv`` with its ``windows.json`` geometry, searched in place.

    Each call opens the file itself, so one object serves every thread. Fields are returned
    as the CSV's own text (no float round trip). Assumes no field holds a line break (patient
    and slide ids are folder names).

    Raises
    ------
    InputTableError
        From the constructor: the CSV is missing or not a windows CSV.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        record: WindowsRecord,
        *,
        window_pixels: tuple[int, int] = (1, 0),
    ) -> None:
        self.path = str(path)
        self.record = record
        self.columns = read_header(self.path)
        with open(self.path, "rb") as fh:
            fh.readline()
            self._data_start = fh.tell()
        self.cell_l0 = record.stride * record.scale
        """Level-0 pixels between window origins (``stride · scale``)."""
        factor, shift = window_pixels
        self.origin_l0 = (
            (record.proc_x0 or 0) * record.scale,
            (record.proc_y0 or 0) * record.scale,
        )
        """Level-0 corner of window (0, 0): the bounds' corner on slides with bounds."""
        self.offset_l0 = shift * self.cell_l0 / factor
        """Where the heatmap colours window (0, 0): its stride cell moved to the window's
        centre when windows overlap (:func:`wsiproc.heatmap.centring`)."""

    def __repr__(self) -> str:
        return f"WindowTable({self.path!r}, grid={self.record.grid_rows}x{self.record.grid_cols})"

    def find(self, row: int, col: int) -> list[str] | None:
        """The fields of window (``row``, ``col``), or None if it has no row (not processed)."""
        for fields in self.rows_between(row, row, first_col=col):
            if int(fields[_COL]) == col:
                return fields
            break
        return None

    def rows_between(self, row0: int, row1: int, *, first_col: int = 0) -> Iterator[list[str]]:
        """Every window with ``row0 <= row <= row1`` (from column ``first_col`` of ``row0``)."""
        with open(self.path, "rb") as fh:
            fh.seek(self._first_at_or_after(fh, (row0, first_col)))
            for raw in fh:
                fields = next(csv.reader([raw.decode("utf-8")]))
                if int(fields[_ROW]) > row1:
                    return
                yield fields

    def window_at(self, l0_x: float, l0_y: float) -> tuple[int, int, list[str] | None] | None:
        """(row, col, fields) of the window whose stride cell holds level-0 point (x, y) (the
        cell the heatmap colours), fields None if it was not processed; None off the grid."""
        row = math.floor((l0_y - self.origin_l0[1] - self.offset_l0) / self.cell_l0)
        col = math.floor((l0_x - self.origin_l0[0] - self.offset_l0) / self.cell_l0)
        if not (0 <= row < self.record.grid_rows and 0 <= col < self.record.grid_cols):
            return None
        fields = self.find(row, col)
        if fields is not None:
            x, y, w, h = (int(fields[i]) for i in _BOX)
            if not (x <= l0_x < x + w and y <= l0_y < y + h):
                fields = None  # stride > kernel: the point lies in the gap between windows
        return row, col, fields

    def windows_in(
        self, l0_x: float, l0_y: float, l0_width: float, l0_height: float, *, limit: int
    ) -> list[list[int]] | None:
        """``[row, col, x, y, width, height]`` of each window overlapping the level-0 box;
        None if more than ``limit`` rows of the grid would have to be read."""
        kernel_l0 = self.record.kernel_size * self.record.scale
        gx, gy = l0_x - self.origin_l0[0], l0_y - self.origin_l0[1]  # from window (0, 0)
        row0 = max(0, math.floor((gy - kernel_l0) / self.cell_l0))
        row1 = min(self.record.grid_rows - 1, math.floor((gy + l0_height) / self.cell_l0))
        col0 = max(0, math.floor((gx - kernel_l0) / self.cell_l0))
        col1 = min(self.record.grid_cols - 1, math.floor((gx + l0_width) / self.cell_l0))
        if row1 < row0 or col1 < col0:
            return []
        if (row1 - row0 + 1) * self.record.grid_cols > limit:
            return None
        found = []
        for fields in self.rows_between(row0, row1):
            col = int(fields[_COL])
            if not col0 <= col <= col1:
                continue
            x, y, w, h = (int(fields[i]) for i in _BOX)
            if x < l0_x + l0_width and x + w > l0_x and y < l0_y + l0_height and y + h > l0_y:
                found.append([int(fields[_ROW]), col, x, y, w, h])
        return found

    def _first_at_or_after(self, fh: BinaryIO, key: tuple[int, int]) -> int:
        """Byte offset of the first data line whose (row, col) is at least ``key``."""
        size = os.fstat(fh.fileno()).st_size
        lo, hi = self._data_start, size
        while lo < hi:
            mid = (lo + hi) // 2
            start, line = self._line_from(fh, mid)
            if not line or _key(line) >= key:
                hi = mid
            else:
                lo = mid + 1
        return self._line_from(fh, lo)[0]

    def _line_from(self, fh: BinaryIO, offset: int) -> tuple[int, bytes]:
        """(start, text) of the first line starting at or after ``offset`` (b"" at the end)."""
        if offset <= self._data_start:
            fh.seek(self._data_start)
        else:
            fh.seek(offset - 1)
            fh.readline()
        start = fh.tell()
        return start, fh.readline()


def _key(line: bytes) -> tuple[int, int]:
    """(row, col) of a data line."""
    fields = next(csv.reader([line.decode("utf-8")]))
    return int(fields[_ROW]), int(fields[_COL])
