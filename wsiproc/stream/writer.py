"""The writer process: gathers processed pieces per chunk and checkpoints finished chunks.

Runs off the critical path: the collector only puts small ``Piece`` messages on a bounded
queue. Chunks complete in any order; ordering happens once, when the final CSV is assembled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from .checkpoint import Checkpoint
from .messages import ProcessedPiece, WriterClose, WriterFailed, WriterJob
from .worker import get_while_parent_alive, quiet_signals


def run_writer(jobs: Any, pieces: Any, status: Any, parent_pid: int) -> None:
    """Take a :class:`WriterJob` (None: nothing to write), then consume ``pieces`` until
    ``WriterClose``; report a failure on ``status`` and exit 1.

    Started with the loaders, before the run is planned, so its start-up is off the stream's
    path. Exits on its own if the engine process dies (what is committed stays committed).
    """
    quiet_signals()
    job: WriterJob | None = get_while_parent_alive(jobs, parent_pid)
    if job is None:
        return
    directory = job.directory
    try:
        ckpt = Checkpoint(Path(directory), job.fingerprint, job.width)
        partial: dict[int, list[ProcessedPiece]] = {}
        while True:
            msg = get_while_parent_alive(pieces, parent_pid)
            if isinstance(msg, WriterClose):
                if msg.keep_partial:
                    for index in sorted(partial):
                        _commit(ckpt, index, partial[index])
                break
            got = partial.setdefault(msg.chunk_index, [])
            got.append(msg)
            if len(got) == msg.n_batches:
                _commit(ckpt, msg.chunk_index, got)
                del partial[msg.chunk_index]
    except OutputError as exc:
        status.put(WriterFailed(str(exc), exc.path))
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - worker top level: report, never hang the engine
        status.put(
            WriterFailed(f"{directory}: writer failed: {type(exc).__name__}: {exc}", directory)
        )
        raise SystemExit(1) from None


def _commit(ckpt: Checkpoint, chunk: int, pieces: list[ProcessedPiece]) -> None:
    """Checkpoint one chunk's pieces in batch order."""
    pieces = sorted(pieces, key=lambda p: p.batch_index)
    ckpt.append(
        chunk,
        np.concatenate([p.rows for p in pieces]),
        np.concatenate([p.cols for p in pieces]),
        np.concatenate([p.values for p in pieces]),
    )
