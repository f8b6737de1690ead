"""The final ``windows.csv``: checkpointed groups merged in (row, col) order, written atomically.

Kept apart from the process pipeline: assembly reads only the checkpoint, so it is the same
after an uninterrupted run and after any number of resumes (hence byte-identical outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np

from ..atomic import atomic_write
from ..grid import Grid
from ..table import format_rows, header
from .checkpoint import Checkpoint
from .messages import GroupTask


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
    """Write the CSV (header only when no window was processed); return its row count.

    Groups are in row-major chunk order, so once a group starting at window row R is loaded,
    every row above R is complete and is written out: memory holds about one band of chunks.
    """
    n = 0
    buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def flush(fh: IO[str], below_row: int | None) -> None:
        nonlocal n, buffer
        if not buffer:
            return
        rows = np.concatenate([p[0] for p in buffer]).astype(np.int64)
        cols = np.concatenate([p[1] for p in buffer]).astype(np.int64)
        values = np.concatenate([p[2] for p in buffer])
        ready = np.ones(len(rows), dtype=bool) if below_row is None else rows < below_row
        keep_back = ~ready
        buffer = [(rows[keep_back], cols[keep_back], values[keep_back])] if keep_back.any() else []
        rows, cols, values = rows[ready], cols[ready], values[ready]
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
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

    with atomic_write(out) as fh:
        fh.write(",".join(header(names)) + "\n")
        for group in groups:
            if group.index not in ckpt.done:
                continue  # a collector that stopped early left it out
            flush(fh, group.chunks[0].chunk.row0)
            buffer.append(ckpt.read(group.index))
        flush(fh, None)
    return n
