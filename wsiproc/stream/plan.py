"""What one inference run will do, decided before any process starts: pure and testable alone.

From the level plan, the window parameters and the tissue mask, the planner fixes the grid,
the chunks, each window's tissue fraction, which windows go through the model, how they are
grouped into batches and checkpoints, and the fingerprint a checkpoint must match to be
resumed. Nothing here reads pixels or starts processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..grid import Chunk, Grid, plan_chunks
from ..readers import L0Box
from ..record import WINDOWS_FORMAT
from .messages import ChunkTask, GroupTask

GROUP_BATCHES = 4
"""Full batches per group (the unit of batching and checkpointing): few partial batches,
yet fine-grained enough to balance loaders and lose little work on a kill."""


@dataclass(frozen=True)
class StreamPlan:
    """The windows of one run and how they are read, batched and checkpointed.

    ``tissue`` is each window's tissue fraction rounded as the CSV prints it (so the
    ``min_tissue`` threshold sees what the user sees); ``keep`` marks windows to process.
    """

    grid: Grid
    tile_px: int | None
    chunks: tuple[Chunk, ...]
    tissue: np.ndarray
    keep: np.ndarray
    groups: tuple[GroupTask, ...]

    @property
    def windows_to_process(self) -> int:
        """Windows that pass the tissue threshold."""
        return int(self.keep.sum())


def window_fractions(grid: Grid, mask: np.ndarray | None, l0_box: L0Box) -> np.ndarray:
    """(rows, cols) float32 fraction of every window covered by a thumbnail-sized mask
    (tissue, or ink).

    ``mask`` covers ``l0_box`` (the slide's bounds, or the whole slide), as
    :meth:`wsiproc.slide.Slide.thumbnail_rgb` does. ``mask`` None (no window, or no mask
    needed) gives zeros.
    """
    tissue = np.zeros((grid.rows, grid.cols), dtype=np.float32)
    if grid.rows and grid.cols and mask is not None:
        from ..tissue import window_tissue_fractions

        sx, sy = l0_box.width / mask.shape[1], l0_box.height / mask.shape[0]
        rr, cc = np.mgrid[0 : grid.rows, 0 : grid.cols]
        boxes = grid.l0_boxes(rr.ravel(), cc.ravel())
        boxes[:, 0] -= l0_box.x
        boxes[:, 1] -= l0_box.y
        tissue = window_tissue_fractions(mask, sx, sy, boxes).reshape(grid.rows, grid.cols)
    return np.round(tissue, 4).astype(np.float32)


def plan_stream(
    grid: Grid,
    tissue: np.ndarray,
    *,
    ink: np.ndarray | None = None,
    min_tissue: float,
    max_ink: float,
    batch_size: int,
    chunk_px: int,
    tile_px: int | None,
) -> StreamPlan:
    """Chunks, keep mask and groups for ``grid`` given each window's tissue fraction.

    ``tile_px`` (the slide's tile size, when windows are read without resizing) aligns chunks
    to tiles so no tile is decoded twice. Gating applies only when ``min_tissue > 0``: a
    window is kept when its tissue is >= ``min_tissue`` and its ``ink`` fraction (if given)
    <= ``max_ink`` (1 keeps every inked window). A window of unknown tissue (NaN) is kept.

    Examples
    --------
    >>> g = Grid(4, 2, 2, 2, "valid", 1.0)
    >>> t, i = np.array([[0.9, 0.0]], np.float32), np.array([[0.5, 0.0]], np.float32)
    >>> kw = dict(batch_size=4, chunk_px=64, tile_px=None)
    >>> plan_stream(g, t, ink=i, min_tissue=0.25, max_ink=0.1, **kw).keep.tolist()
    [[False, False]]
    >>> plan_stream(g, t, ink=i, min_tissue=0.25, max_ink=1.0, **kw).keep.tolist()
    [[True, False]]
    >>> plan_stream(g, t, ink=i, min_tissue=0.0, max_ink=0.1, **kw).keep.tolist()
    [[True, True]]
    >>> plan_stream(g, t * np.nan, min_tissue=0.25, max_ink=0.1, **kw).keep.tolist()
    [[True, True]]
    """
    chunks = tuple(plan_chunks(grid, chunk_px, tile_px))
    keep = np.ones(tissue.shape, dtype=bool)
    if min_tissue > 0:
        keep &= ~(tissue < min_tissue)  # NaN (unknown) is never below: kept
        if ink is not None:
            keep &= ~(ink > max_ink)
    groups = tuple(plan_groups(list(chunks), keep, batch_size))
    return StreamPlan(grid, tile_px, chunks, tissue, keep, groups)


def plan_groups(chunks: list[Chunk], keep: np.ndarray, batch_size: int) -> list[GroupTask]:
    """Consecutive chunks with tissue, grouped until each holds ``GROUP_BATCHES`` batches.

    Depends only on the keep mask and parameters, never on workers or on a resume, so batch
    composition (and thus every output bit) is reproducible.
    """
    target = GROUP_BATCHES * batch_size
    groups: list[GroupTask] = []
    current: list[ChunkTask] = []
    count = 0
    for chunk in chunks:
        sub = keep[chunk.row0 : chunk.row0 + chunk.n_rows, chunk.col0 : chunk.col0 + chunk.n_cols]
        n_keep = int(sub.sum())
        if n_keep == 0:
            continue
        current.append(ChunkTask(chunk, np.ascontiguousarray(sub)))
        count += n_keep
        if count >= target:
            groups.append(GroupTask(len(groups), tuple(current), count))
            current, count = [], 0
    if current:
        groups.append(GroupTask(len(groups), tuple(current), count))
    return groups


def file_stamp(path: str) -> dict[str, Any]:
    """A small input file's identity by content (a mask PNG): a new mask starts afresh."""
    import hashlib

    return {
        "path": os.path.abspath(path),
        "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
    }


def slide_stamp(path: str) -> dict[str, Any]:
    """File identity for the fingerprint: a replaced slide never resumes an old checkpoint."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class RunIdentity:
    """Everything that decides the output bits of a run, as actually used (not as asked).

    ``device`` is the resolved device (``cuda:K``, never ``auto``; the fingerprint keeps only
    its type, so a resume on another GPU is allowed), ``reader`` the reader the slide was
    opened with, ``tissue_source`` where the tissue came from (an unreadable thumbnail under
    ``skip`` keeps every window: another plan), ``model_identity`` includes a model file's
    content hash: a job killed at a time limit and rerun on another node type starts afresh
    instead of mixing.
    """

    slide: dict[str, Any]
    plan: dict[str, Any]
    kernel_px: int
    stride_px: int
    border: str
    min_tissue: float
    max_ink: float
    tissue_source: str
    model: str
    model_identity: str
    outputs: tuple[str, ...]
    batch_size: int
    precision: str
    device: str
    reader: str
    chunk_px: int
    tile_px: int | None
    on_read_error: str
    mask: dict[str, Any] | None
    patient: str
    slide_id: str


def device_type(device: str) -> str:
    """``cuda:1`` -> ``cuda``: which of a machine's GPUs ran a chunk does not change its bits.

    Examples
    --------
    >>> device_type("cuda:1"), device_type("cpu")
    ('cuda', 'cpu')
    """
    return device.partition(":")[0]


def fingerprint(identity: RunIdentity) -> dict[str, Any]:
    """The JSON object a checkpoint must match exactly to be resumed."""
    return {
        "format": WINDOWS_FORMAT,
        "wsiproc": __version__,
        "slide": identity.slide,
        "plan": identity.plan,
        "grid": [identity.kernel_px, identity.stride_px, identity.border],
        "min_tissue": identity.min_tissue,
        "max_ink": identity.max_ink,
        "tissue_source": identity.tissue_source,
        "model": identity.model,
        "model_identity": identity.model_identity,
        "outputs": list(identity.outputs),
        "batch_size": identity.batch_size,
        "precision": identity.precision,
        "device": device_type(identity.device),
        "reader": identity.reader,
        "chunk_px": identity.chunk_px,
        "tile_px": identity.tile_px,
        "on_read_error": identity.on_read_error,
        "mask": identity.mask,
        "patient": identity.patient,
        "slide_id": identity.slide_id,
    }
