"""The final ``windows.csv``: checkpointed groups merged in (row, col) order, written atomically.

Kept apart from the process pipeline: assembly reads only the checkpoint, so it is the same
after an uninterrupted run and after any number of resumes (hence byte-identical outputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..grid import Grid
from ..table import format_rows, header
from .checkpoint import Checkpoint
from .messages import GroupTask

Band = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Rows, columns and output values of finished windows, in (row, col) order."""


def grid_ordered_bands(ckpt: Checkpoint, groups: Sequence[GroupTask]) -> Iterator[Band]:
    """Every checkpointed window, in (row, col) order, one band of rows at a time.

    Groups are in row-major chunk order, so once a group starting at window row R is read,
    every row above R is complete and is yielded: memory holds about one band of chunks. Both
    assemblies (CSV and features file) read the checkpoint through this one order, so either
    output is the same after an uninterrupted run and after any number of resumes.
    """
    buffer: list[Band] = []

    def ready_part(below_row: int | None) -> Band | None:
        nonlocal buffer
        if not buffer:
            return None
        rows = np.concatenate([p[0] for p in buffer]).astype(np.int64)
        cols = np.concatenate([p[1] for p in buffer]).astype(np.int64)
        values = np.concatenate([p[2] for p in buffer])
        ready = np.ones(len(rows), dtype=bool) if below_row is None else rows < below_row
        back = ~ready
        buffer = [(rows[back], cols[back], values[back])] if back.any() else []
        rows, cols, values = rows[ready], cols[ready], values[ready]
        order = np.lexsort((cols, rows))
        return rows[order], cols[order], values[order]

    for group in groups:
        if group.index not in ckpt.done:
            continue  # a collector that stopped early left it out
        band = ready_part(group.chunks[0].chunk.row0)
        if band is not None and len(band[0]):
            yield band
        buffer.append(ckpt.read(group.index))
    band = ready_part(None)
    if band is not None and len(band[0]):
        yield band


def assemble_csv(
    out: str | Path,
    *,
    grid: Grid,
    level: int,
    ckpt: Checkpoint,
    groups: tuple[GroupTask, ...] | list[GroupTask],
    tissue: np.ndarray,
    names: list[str],
    patient: str,
    slide_id: str,
) -> int:
    """Write the CSV (header only when no window was processed); return its row count."""
    n = 0
    with atomic_write(out) as fh:
        fh.write(",".join(header(names)) + "\n")
        for rows, cols, values in grid_ordered_bands(ckpt, groups):
            fh.write(
                format_rows(
                    patient,
                    slide_id,
                    rows,
                    cols,
                    grid.l0_boxes(rows, cols),
                    level,
                    tissue[rows, cols],
                    values,
                )
            )
            n += len(rows)
    return n
