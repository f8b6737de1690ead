"""The process pipeline of one run: loader processes, the writer process, their queues, the
shared-memory slots and their teardown.

The only place that creates processes and shared memory. Every wait is bounded: a dead or
stuck child becomes a :class:`~wsiproc.errors.WorkerError` within seconds, never a hang, and
:meth:`Pipeline.close` frees every process and the shared memory whatever happened.

Driven by the engine, never importing it: it takes the :class:`~.request.InferRequest` and
the planned groups, and hands back only what the writer committed (the checkpoint).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideReadError, WorkerError, WsiprocError
from ..grid import Grid
from ..level import LevelPlan
from .checkpoint import Checkpoint
from .collector import StreamCollector, StreamPiece
from .loader import LoaderJob, run_loader
from .messages import (
    GroupTask,
    LoaderDone,
    LoaderFailed,
    ProcessedPiece,
    WindowBatch,
    WriterClose,
    WriterJob,
)
from .request import InferRequest
from .shm import SlotPool
from .writer import run_writer

WRITER_CLOSE_TIMEOUT_S = 120.0
"""Longest wait for the writer to commit its last groups after the end of the stream: the
fsyncs of a few groups on a slow network file system, with a wide margin."""

JOIN_TIMEOUT_S = 5.0
"""Longest wait for a process to exit after it was told to, before it is terminated."""

FailureSink = Callable[[WindowBatch, int], None]
"""Called with each batch that had unreadable windows, and their count, before its values
go to the writer (so the record of what was skipped is never behind the checkpoint)."""


def _fork_is_safe() -> bool:
    """Fork (fast start) only while this process runs no other thread and has loaded no
    library that keeps threads or locks (libvips, torch, OpenSlide); else spawn."""
    return (
        "fork" in mp.get_all_start_methods()
        and threading.active_count() == 1
        and not any(name in sys.modules for name in ("pyvips", "torch", "openslide"))
    )


class Pipeline:
    """Loader processes, the writer process, their queues and the shared-memory slots.

    Created (loaders and writer started) before the tasks are known; :meth:`start` gives the
    loaders their job, :meth:`run` the writer its job and the loaders their tasks.
    :meth:`close` always tears every process and the shared memory down, also after errors.
    """

    def __init__(self, req: InferRequest) -> None:
        self.req = req
        self.grid: Grid | None = None
        self.marks: dict[str, float] = {}  # monotonic times of the steps, for timings_s
        # Seconds inside the collector (the model) during the stream: stream time minus this
        # is time the model waited for loaders or the writer.
        self.collector_s = 0.0
        self.writer: Any = None  # set before any process starts: close() may run after errors
        ctx = mp.get_context("fork" if _fork_is_safe() else "spawn")
        self.ctx = ctx
        self.workers = req.workers
        self.n_slots = 2 * self.workers + 1
        k = req.kernel_px
        self.pool = SlotPool.create(self.n_slots, (req.batch_size, k, k, 3))
        self.jobs = ctx.Queue()
        self.tasks = ctx.Queue()
        self.free_slots = ctx.Queue()
        self.ready = ctx.Queue(maxsize=self.n_slots + self.workers)
        # Pieces are small (values only), so a deep queue keeps the collector from ever waiting.
        self.pieces = ctx.Queue(maxsize=1024)
        self.writer_status = ctx.Queue()
        self.writer_jobs = ctx.Queue()
        self.procs: list[Any] = []
        self.jobs_sent = False
        self.writer_job_sent = False
        self.sentinels_sent = False
        for w in range(self.workers):
            p = ctx.Process(
                target=run_loader,
                name=f"wsiproc-loader-{w}",
                args=(w, self.jobs, self.tasks, self.free_slots, self.ready, os.getpid()),
                daemon=True,
            )
            p.start()
            self.procs.append(p)
        # The writer starts now too (forked while that is safe, as the loaders): spawned
        # later it would start a fresh interpreter during the stream, on the loaders' cores.
        self.writer = ctx.Process(
            target=run_writer,
            name="wsiproc-writer",
            daemon=True,
            args=(self.writer_jobs, self.pieces, self.writer_status, os.getpid()),
        )
        self.writer.start()
        for slot in range(self.n_slots):
            self.free_slots.put(slot)

    def start(self, plan: LevelPlan, grid: Grid, reader: str) -> None:
        """Tell the (already running) loaders what to read, with the reader the engine chose."""
        self.grid = grid
        job = LoaderJob(
            self.req.slide,
            reader,
            plan,
            grid,
            self.req.batch_size,
            self.pool.path,
            self.n_slots,
            skip_read_errors=self.req.on_read_error == "skip",
        )
        for _ in range(self.workers):
            self.jobs.put(job)
        self.jobs_sent = True

    def run(
        self,
        todo: list[GroupTask],
        collector: StreamCollector,
        ckpt: Checkpoint,
        fingerprint: dict[str, Any],
        width: int,
        resumed: int,
        total: int,
        on_failures: FailureSink,
    ) -> None:
        """Feed the tasks, collect every batch in this process, let the writer checkpoint."""
        for task in todo:
            self.tasks.put(task)
        for _ in range(self.workers):
            self.tasks.put(None)
        self.sentinels_sent = True
        if not todo:
            return
        grid, pool = self.grid, self.pool
        self.writer_jobs.put(WriterJob(str(ckpt.directory), fingerprint, width))
        self.writer_job_sent = True
        progress = _progress(
            total, resumed, Path(self.req.slide).name, not self.req.quiet and sys.stderr.isatty()
        )
        try:
            running = self.workers
            stopped_early = False
            while running:
                msg = self._get_ready()
                if isinstance(msg, LoaderDone):
                    running -= 1
                    continue
                if isinstance(msg, LoaderFailed):
                    if msg.kind == "read" and msg.region is not None:
                        raise SlideReadError(msg.path, msg.region, msg.problem)
                    raise WorkerError(msg.message)
                if "first_batch" not in self.marks:
                    self.marks["first_batch"] = time.monotonic()
                n = len(msg.rows)
                piece = StreamPiece(
                    pool.view(msg.slot)[:n],
                    msg.rows,
                    msg.cols,
                    grid.l0_boxes(msg.rows, msg.cols),
                    msg.unreadable,
                )
                # A copy, always: a collector may reuse its output buffer for the next batch,
                # and these values wait on the writer's queue.
                t_model = time.perf_counter()
                values = np.array(collector.process_piece(piece), dtype=np.float32, copy=True)
                self.collector_s += time.perf_counter() - t_model
                values = values.reshape(n, -1)
                if msg.unreadable is not None:
                    values[msg.unreadable] = np.nan
                    on_failures(msg, int(msg.unreadable.sum()))
                if values.shape[1] != width:
                    raise WorkerError(
                        f"collector returned {values.shape[1]} values per window, expected "
                        f"{width} ({', '.join(collector.output_names)})"
                    )
                self.free_slots.put(msg.slot)
                self._put_piece(
                    ProcessedPiece(
                        msg.chunk_index, msg.batch_index, msg.n_batches, msg.rows, msg.cols, values
                    )
                )
                progress.update(n)
                if collector.is_finished():
                    stopped_early = True
                    break
            self.marks["last_batch"] = time.monotonic()
            self._put_piece(WriterClose(keep_partial=stopped_early))
            self.writer.join(timeout=WRITER_CLOSE_TIMEOUT_S)
            self.marks["writer_close"] = time.monotonic()
            self._raise_writer_failure()
            if self.writer.is_alive():
                raise WorkerError(
                    f"{ckpt.directory}: the writer did not finish within "
                    f"{WRITER_CLOSE_TIMEOUT_S:g} s (file system stuck?)"
                )
            if self.writer.exitcode != 0:
                raise self._writer_died()
        finally:
            progress.close()
        ckpt.reload()  # what the writer process committed

    def close(self) -> None:
        """Stop every process and free the shared memory (idempotent, even if interrupted).

        SIGTERM is ignored meanwhile: a second one (Snakemake escalating) must not cut the
        clean-up short and leave processes or shared memory behind.
        """
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs = [p for p in [*self.procs, self.writer] if p is not None]
        try:
            if not self.jobs_sent:
                for _ in range(self.workers):
                    self.jobs.put(None)
                self.jobs_sent = True
            if not self.sentinels_sent:
                for _ in range(self.workers):
                    self.tasks.put(None)
                self.sentinels_sent = True
            if not self.writer_job_sent:
                self.writer_jobs.put(None)
                self.writer_job_sent = True
            if self.writer is not None and self.writer.is_alive():
                try:  # after an error: let the writer exit now (complete chunks are committed)
                    self.pieces.put(WriterClose(), timeout=1.0)
                except queue_mod.Full:
                    pass
            for p in procs:
                p.join(timeout=0.5 if p is not self.writer else JOIN_TIMEOUT_S)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=JOIN_TIMEOUT_S)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=JOIN_TIMEOUT_S)
            self.pool.unlink()
            queues = (
                self.jobs,
                self.tasks,
                self.free_slots,
                self.ready,
                self.pieces,
                self.writer_status,
                self.writer_jobs,
            )
            for q in queues:
                if q is None:
                    continue
                q.cancel_join_thread()
                q.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _raise_writer_failure(self) -> None:
        try:
            failed = self.writer_status.get_nowait()
        except queue_mod.Empty:
            return
        raise WsiprocError(failed.message)

    def _writer_died(self) -> WsiprocError:
        self._raise_writer_failure()
        how = describe_exit(self.writer.exitcode)
        return WorkerError(f"{self.req.out}: the writer process {how}; finished groups are kept")

    def _get_ready(self) -> Any:
        """Next loader message; a dead loader or writer becomes an error, not a hang."""
        while True:
            try:
                return self.ready.get(timeout=1.0)
            except queue_mod.Empty:
                pass
            if not self.writer.is_alive():
                raise self._writer_died()
            for p in self.procs:
                if not p.is_alive() and p.exitcode not in (0, None):
                    try:  # its failure message may still be in flight
                        return self.ready.get(timeout=1.0)
                    except queue_mod.Empty:
                        how = describe_exit(p.exitcode)
                        raise WorkerError(
                            f"{self.req.slide}: loader process {p.name} {how}"
                        ) from None

    def _put_piece(self, msg: Any) -> None:
        """Put on the bounded writer queue; fail if the writer died meanwhile.

        Checked before every put: a dead writer's queue still accepts pieces, and the
        collector would otherwise run to the end of the slide for nothing.
        """
        if not self.writer.is_alive():
            raise self._writer_died()
        while True:
            try:
                self.pieces.put(msg, timeout=1.0)
                return
            except queue_mod.Full:
                if not self.writer.is_alive():
                    raise self._writer_died() from None


def describe_exit(code: int | None) -> str:
    """How a child process ended, in words a user can act on.

    Examples
    --------
    >>> describe_exit(-9)
    'was killed (SIGKILL: out of memory, or killed by hand or by the scheduler)'
    >>> describe_exit(3)
    'exited with code 3'
    """
    if code is None or code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = {
        "SIGKILL": ": out of memory, or killed by hand or by the scheduler",
        "SIGBUS": ": shared memory (/dev/shm) ran out",
        "SIGSEGV": ": a crash in a native library",
    }.get(name, "")
    return f"was killed ({name}{why})"


class _NoProgress:
    """The progress bar of a run that shows none: ``--quiet``, or stderr not a terminal (a
    Snakemake job's log). Importing tqdm only to disable it cost 20 ms of a small slide's
    half-second run."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, resumed: int, name: str, show: bool) -> Any:
    """A tqdm bar over the windows to process, starting at the resumed ones, when shown."""
    if not show:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=resumed, unit="win", desc=name, smoothing=0.1)
