"""Loader processes: read one big chunk per region read, cut it into windows, fill shm slots.

One ``read_region`` per chunk instead of one per window: the decoder touches each slide tile
once even when windows overlap. At a non-native resolution the chunk is resized once, with
its box in exact level coordinates, so adjacent chunks join without seams.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SlideReadError, WsiprocError
from ..grid import Chunk, Grid
from ..level import LevelPlan
from .messages import ChunkTask, GroupTask, LoaderDone, LoaderFailed, ReadFailure, WindowBatch
from .shm import SlotPool
from .worker import get_while_parent_alive, quiet_signals


@dataclass(frozen=True)
class LoaderJob:
    """Everything a loader needs, picklable."""

    slide_path: str
    reader: str
    plan: LevelPlan
    grid: Grid
    batch_size: int
    shm_path: str
    n_slots: int
    skip_read_errors: bool = False


def read_chunk(slide: Any, plan: LevelPlan, grid: Grid, chunk: Chunk) -> np.ndarray:
    """The chunk's processing-resolution pixels as (h, w, 3) uint8, white past the edges."""
    px, py, pw, ph = chunk.proc_box(grid)
    f = plan.resize_factor
    if f == 1.0:
        return slide.read_region_rgb(plan.level, px, py, pw, ph)
    from PIL import Image

    lx0, ly0, lx1, ly1 = px / f, py / f, (px + pw) / f, (py + ph) / f
    margin = math.ceil(2 / min(f, 1.0)) + 1
    rx0, ry0 = math.floor(lx0) - margin, math.floor(ly0) - margin
    rx1, ry1 = math.ceil(lx1) + margin, math.ceil(ly1) + margin
    region = slide.read_region_rgb(plan.level, rx0, ry0, rx1 - rx0, ry1 - ry0)
    box = (lx0 - rx0, ly0 - ry0, lx1 - rx0, ly1 - ry0)
    img = Image.fromarray(region).resize((pw, ph), Image.Resampling.BILINEAR, box=box)
    return np.asarray(img)


class _BatchFiller:
    """Fills shared-memory slots window by window and sends each full (or last) batch."""

    def __init__(
        self,
        job: LoaderJob,
        pool: SlotPool,
        free_slots: Any,
        ready: Any,
        group: int,
        n_batches: int,
        parent_pid: int,
    ) -> None:
        self.job, self.pool, self.free_slots, self.ready = job, pool, free_slots, ready
        self.group, self.n_batches, self.parent_pid = group, n_batches, parent_pid
        self.batch_index = 0
        self.slot: int | None = None
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.unreadable: list[bool] = []
        self.failures: list[ReadFailure] = []

    def add(self, window: np.ndarray | None, row: int, col: int) -> None:
        """Copy one window into the slot; None: unreadable (white pixels, NaN outputs)."""
        if self.slot is None:
            self.slot = get_while_parent_alive(self.free_slots, self.parent_pid)
        view = self.pool.view(self.slot)[len(self.rows)]
        if window is None:
            view[...] = 255
        else:
            view[...] = window
        self.rows.append(row)
        self.cols.append(col)
        self.unreadable.append(window is None)
        if len(self.rows) == self.job.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.slot is None:
            return
        self.ready.put(
            WindowBatch(
                chunk_index=self.group,
                batch_index=self.batch_index,
                n_batches=self.n_batches,
                slot=self.slot,
                rows=np.asarray(self.rows, dtype=np.int32),
                cols=np.asarray(self.cols, dtype=np.int32),
                unreadable=np.asarray(self.unreadable) if any(self.unreadable) else None,
                failures=tuple(self.failures),
            )
        )
        self.batch_index += 1
        self.slot = None
        self.rows, self.cols, self.unreadable, self.failures = [], [], [], []


def _emit_chunk(slide: Any, job: LoaderJob, task: ChunkTask, batch: _BatchFiller) -> None:
    """Read one chunk (only the bounding box of its kept windows) and add its windows.

    With ``skip_read_errors``, a chunk that fails to decode is read again window by window
    (the slide reopens after each failure), so only the windows that touch the bad region
    are lost.
    """
    chunk = task.chunk
    k, s = job.grid.kernel_px, job.grid.stride_px
    local_r, local_c = np.nonzero(task.keep)
    r0, c0 = int(local_r.min()), int(local_c.min())
    box = Chunk(
        chunk.index,
        chunk.row0 + r0,
        chunk.col0 + c0,
        int(local_r.max()) - r0 + 1,
        int(local_c.max()) - c0 + 1,
    )
    try:
        pixels = read_chunk(slide, job.plan, job.grid, box)
    except SlideReadError:
        if not job.skip_read_errors:
            raise
    else:
        for lr, lc in zip(local_r.tolist(), local_c.tolist(), strict=True):
            y, x = (lr - r0) * s, (lc - c0) * s
            batch.add(pixels[y : y + k, x : x + k], chunk.row0 + lr, chunk.col0 + lc)
        return
    for lr, lc in zip(local_r.tolist(), local_c.tolist(), strict=True):
        row, col = chunk.row0 + lr, chunk.col0 + lc
        try:
            window = read_chunk(slide, job.plan, job.grid, Chunk(chunk.index, row, col, 1, 1))
        except SlideReadError as exc:
            level, x, y, w, h = exc.region
            batch.failures.append(ReadFailure(level, x, y, w, h, exc.problem))
            window = None
        batch.add(window, row, col)


def run_loader(
    worker: int, jobs: Any, tasks: Any, free_slots: Any, ready: Any, parent_pid: int
) -> None:
    """Loader process body: a job (or None: nothing to do), then tasks in, filled slots out,
    then ``LoaderDone``."""
    quiet_signals()
    # Load the decoders while the engine is still planning (overlaps their import time).
    os.environ.setdefault("VIPS_CONCURRENCY", "1")
    import pyvips

    # Every crop is new: libvips' operation cache would only grow with the slide.
    pyvips.cache_set_max(0)
    from ..slide import Slide

    job: LoaderJob | None = get_while_parent_alive(jobs, parent_pid)
    if job is None:
        return
    try:
        pool = SlotPool.attach(
            job.shm_path, job.n_slots, (job.batch_size, job.grid.kernel_px, job.grid.kernel_px, 3)
        )
        slide = Slide(job.slide_path, reader=job.reader)
        while True:
            group: GroupTask | None = get_while_parent_alive(tasks, parent_pid)
            if group is None:
                break
            n_batches = math.ceil(group.n_windows / job.batch_size)
            batch = _BatchFiller(job, pool, free_slots, ready, group.index, n_batches, parent_pid)
            for task in group.chunks:
                _emit_chunk(slide, job, task, batch)
            batch.flush()
        ready.put(LoaderDone(worker))
    except SlideReadError as exc:
        ready.put(LoaderFailed(worker, str(exc), "read", exc.path, exc.region, exc.problem))
    except WsiprocError as exc:
        ready.put(LoaderFailed(worker, str(exc), "other", job.slide_path))
    except Exception as exc:  # noqa: BLE001 - worker top level: report, never hang the engine
        msg = f"{job.slide_path}: loader failed: {type(exc).__name__}: {exc}"
        ready.put(LoaderFailed(worker, msg, "other", job.slide_path))
