"""The only objects that cross process boundaries: small frozen dataclasses.

Pixels never travel in these; they sit in shared-memory slots (see ``shm.py``), and a batch
message names its slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..grid import Chunk


@dataclass(frozen=True)
class ChunkTask:
    """Read ``chunk`` and emit its windows where ``keep`` (n_rows x n_cols bool) is set."""

    chunk: Chunk
    keep: np.ndarray


@dataclass(frozen=True)
class GroupTask:
    """Consecutive chunks read by one loader and batched together; the checkpoint unit.

    Batches never mix groups, and groups depend only on the slide, tissue and parameters, so
    every window meets the model in the same batch whatever the number of workers, and after
    a resume: outputs are reproducible to the last bit even for batch-sensitive models.
    """

    index: int
    chunks: tuple[ChunkTask, ...]
    n_windows: int


@dataclass(frozen=True)
class ReadFailure:
    """A region that could not be decoded (level pixels) and the decoder's reason."""

    level: int
    x: int
    y: int
    width: int
    height: int
    problem: str


@dataclass(frozen=True)
class WindowBatch:
    """Windows of group ``chunk_index`` in shared-memory slot ``slot``; batch i of n_batches.

    Under ``--on-read-error skip``, ``unreadable`` marks windows whose pixels could not be
    read (their slot rows are white; their outputs become NaN) and ``failures`` lists the
    regions found since the previous batch.
    """

    chunk_index: int
    batch_index: int
    n_batches: int
    slot: int
    rows: np.ndarray
    cols: np.ndarray
    unreadable: np.ndarray | None = None
    failures: tuple[ReadFailure, ...] = ()


@dataclass(frozen=True)
class LoaderDone:
    """Loader ``worker`` has no more tasks."""

    worker: int


@dataclass(frozen=True)
class LoaderFailed:
    """Loader ``worker`` stopped on an error; ``message`` is the one-line reason."""

    worker: int
    message: str
    kind: str
    path: str
    region: tuple[int, int, int, int, int] | None = None
    problem: str = ""


@dataclass(frozen=True)
class ProcessedPiece:
    """Outputs of one batch (PyDmed's ProcessedPiece): ``values`` is (n, columns) float32."""

    chunk_index: int
    batch_index: int
    n_batches: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class WriterJob:
    """What the (already running) writer checkpoints: the directory, the fingerprint a
    checkpoint must match, and the number of values per window."""

    directory: str
    fingerprint: dict[str, Any]
    width: int


@dataclass(frozen=True)
class WriterClose:
    """No more pieces: flush and exit.

    ``keep_partial``: also commit chunks only partly processed (the collector stopped early);
    never set after an error, so a resumed run re-reads such chunks whole.
    """

    keep_partial: bool = False


@dataclass(frozen=True)
class WriterFailed:
    """The writer could not write (``message`` names the file and the problem)."""

    message: str
    path: str
