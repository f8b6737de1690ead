"""Loader processes: read one big chunk per region read, cut it into windows, fill shm slots.

One ``read_region`` per chunk instead of one per window: the decoder touches each slide tile
once even when windows overlap. At a non-native resolution the chunk is resized once, with
its box in exact level coordinates, so adjacent chunks join without seams.
"""

from __future__ import annotations

import math
import os
import queue as queue_mod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SlideReadError, WsiprocError
from ..grid import Chunk, Grid
from ..level import LevelPlan
from .messages import ChunkTask, LoaderDone, LoaderFailed, WindowBatch
from .shm import SlotPool


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
    parent_pid: int


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


def _get(q: Any, parent_pid: int) -> Any:
    """Blocking get that gives up when the parent process died (no orphans after SIGKILL)."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent_pid:
                raise SystemExit(1) from None


def run_loader(worker: int, job: LoaderJob, tasks: Any, free_slots: Any, ready: Any) -> None:
    """Loader process body: tasks in, filled slots out, then ``LoaderDone``."""
    os.environ.setdefault("VIPS_CONCURRENCY", "1")
    from ..slide import Slide

    try:
        pool = SlotPool.attach(
            job.shm_path, job.n_slots, (job.batch_size, job.grid.kernel_px, job.grid.kernel_px, 3)
        )
        slide = Slide(job.slide_path, reader=job.reader)
        k, s = job.grid.kernel_px, job.grid.stride_px
        while True:
            task: ChunkTask | None = _get(tasks, job.parent_pid)
            if task is None:
                break
            chunk = task.chunk
            local_r, local_c = np.nonzero(task.keep)
            # Read only the bounding box of the kept windows (edge-of-tissue chunks shrink).
            r0, c0 = int(local_r.min()), int(local_c.min())
            box = Chunk(
                chunk.index,
                chunk.row0 + r0,
                chunk.col0 + c0,
                int(local_r.max()) - r0 + 1,
                int(local_c.max()) - c0 + 1,
            )
            pixels = read_chunk(slide, job.plan, job.grid, box)
            n = len(local_r)
            n_batches = math.ceil(n / job.batch_size)
            for b in range(n_batches):
                sel = slice(b * job.batch_size, min(n, (b + 1) * job.batch_size))
                slot = _get(free_slots, job.parent_pid)
                out = pool.view(slot)
                for j, (lr, lc) in enumerate(zip(local_r[sel], local_c[sel], strict=True)):
                    y, x = (lr - r0) * s, (lc - c0) * s
                    out[j] = pixels[y : y + k, x : x + k]
                ready.put(
                    WindowBatch(
                        chunk_index=chunk.index,
                        batch_index=b,
                        n_batches=n_batches,
                        slot=slot,
                        rows=(local_r[sel] + chunk.row0).astype(np.int32),
                        cols=(local_c[sel] + chunk.col0).astype(np.int32),
                    )
                )
        ready.put(LoaderDone(worker))
    except SlideReadError as exc:
        ready.put(LoaderFailed(worker, str(exc), "read", exc.path, exc.region, exc.problem))
    except WsiprocError as exc:
        ready.put(LoaderFailed(worker, str(exc), "other", job.slide_path))
    except Exception as exc:  # noqa: BLE001 - worker top level: report, never hang the engine
        msg = f"{job.slide_path}: loader failed: {type(exc).__name__}: {exc}"
        ready.put(LoaderFailed(worker, msg, "other", job.slide_path))
