"""The engine: the only place that creates processes, queues, shared memory and cleanup.

``run_inference`` plans the grid and tissue, resumes from a checkpoint, streams chunks through
loader processes -> collector (this process) -> writer process, then assembles the CSV sorted
by (row, col) and moves it into place atomically.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_write
from ..errors import ConfigError, SlideReadError, WorkerError, WsiprocError
from ..grid import Chunk, Grid, plan_chunks
from ..level import LevelPlan, LevelSpec, select_level
from ..slide import Slide
from ..table import format_rows, header
from ..tissue import THUMBNAIL_PX, tissue_mask, window_tissue_fractions
from .checkpoint import Checkpoint
from .collector import ModelCollector, StreamCollector, StreamInfo, StreamPiece, make_collector
from .loader import LoaderJob, run_loader
from .messages import ChunkTask, GroupTask, LoaderDone, LoaderFailed, ProcessedPiece, WriterClose
from .shm import SlotPool
from .writer import run_writer

WINDOWS_FORMAT = "wsiproc-windows/1"

GROUP_BATCHES = 4
"""Full batches per group (the unit of batching and checkpointing): few partial batches,
yet fine-grained enough to balance loaders and lose little work on a kill."""


@dataclass
class InferRequest:
    """One ``wsiproc infer`` call. Sizes in processing pixels."""

    slide: str
    out: str
    kernel_px: int
    stride_px: int
    spec: LevelSpec = field(default_factory=LevelSpec)
    plan: LevelPlan | None = None
    border: str = "valid"
    min_tissue: float = 0.25
    model: str = "builtin:mean-rgb"
    collector: str | None = None
    workers: int = 2
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    patient: str = ""
    slide_id: str = ""
    quiet: bool = False
    reader: str = "auto"
    chunk_px: int = 2048
    threads: int | None = None


@dataclass
class InferResult:
    """What a finished run produced."""

    csv: Path
    meta: Path
    windows_processed: int
    windows_total: int
    resumed_windows: int
    meta_dict: dict[str, Any]


def meta_path(csv_path: str | Path) -> Path:
    """``windows.csv`` -> ``windows.json``."""
    return Path(csv_path).with_suffix(".json")


def partial_dir(csv_path: str | Path) -> Path:
    """Where checkpoints of ``csv_path`` live until it is complete."""
    p = Path(csv_path)
    return p.with_name(p.name + ".partial")


def _validate(req: InferRequest) -> None:
    """Reject bad parameters before any work."""
    if not 0.0 <= req.min_tissue <= 1.0:
        raise ConfigError("min-tissue", f"must be between 0 and 1, got {req.min_tissue}")
    if req.workers < 1:
        raise ConfigError("workers", f"must be >= 1, got {req.workers}")
    if req.batch_size < 1:
        raise ConfigError("batch-size", f"must be >= 1, got {req.batch_size}")
    if req.chunk_px < 1:
        raise ConfigError("chunk-px", f"must be >= 1, got {req.chunk_px}")


def _slide_stamp(path: str) -> dict[str, Any]:
    """File identity for the fingerprint: a replaced slide never resumes an old checkpoint."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _log(req: InferRequest, text: str) -> None:
    if not req.quiet:
        print(f"wsiproc infer: {text}", file=sys.stderr, flush=True)


class _TerminateOnSignal:
    """Turn SIGTERM (Snakemake cancelling, a cluster's time limit) into an orderly exception.

    Only in the main thread, where Python delivers signals; restores the old handler on exit.
    """

    def __enter__(self) -> _TerminateOnSignal:
        self.previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise WorkerError("terminated by SIGTERM; finished chunks are checkpointed")

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def run_inference(req: InferRequest) -> InferResult:
    """Run the whole stream for one slide; see the module docstring.

    Raises
    ------
    WsiprocError
        Bad slide, parameters or model, a read failure (with the region) or a write failure.
        Finished chunks stay checkpointed, so rerunning the same command continues.
    """
    with _TerminateOnSignal():
        return _run_inference(req)


def _run_inference(req: InferRequest) -> InferResult:
    """Body of :func:`run_inference`."""
    _validate(req)
    started = time.monotonic()
    slide_id = req.slide_id or Path(req.slide).stem
    # Loader processes start first (forked before any decoder library is loaded, when that
    # is safe), so their start-up overlaps opening the slide, tissue detection and model load.
    pipeline = _Pipeline(req)
    try:
        return _run_with_pipeline(req, pipeline, started, slide_id)
    finally:
        pipeline.close()


def _run_with_pipeline(
    req: InferRequest, pipeline: _Pipeline, started: float, slide_id: str
) -> InferResult:
    """:func:`run_inference` once the loader processes are starting."""
    with Slide(req.slide, reader=req.reader) as slide:
        info = slide.info
        plan = req.plan or select_level(info, req.spec)
        grid = Grid(
            plan.proc_width, plan.proc_height, req.kernel_px, req.stride_px, req.border, plan.scale
        )
        rows, cols = grid.rows, grid.cols
        # Tile-aligned chunks when windows are read as stored (no resize): no tile decoded twice.
        tile_px = slide.tile_size(plan.level) if plan.resize_factor == 1.0 else None
        chunks = plan_chunks(grid, req.chunk_px, tile_px)
        pipeline.start(plan, grid)
        tissue = np.zeros((rows, cols), dtype=np.float32)
        if rows and cols:
            thumb = slide.thumbnail_rgb(THUMBNAIL_PX)
            mask = tissue_mask(thumb)
            sx, sy = info.width / mask.shape[1], info.height / mask.shape[0]
            rr, cc = np.mgrid[0:rows, 0:cols]
            boxes = grid.l0_boxes(rr.ravel(), cc.ravel())
            tissue = window_tissue_fractions(mask, sx, sy, boxes).reshape(rows, cols)
        # Rounded as in the CSV, so the threshold sees what the user sees.
        tissue = np.round(tissue, 4).astype(np.float32)
        keep = tissue >= req.min_tissue if req.min_tissue > 0 else np.ones_like(tissue, dtype=bool)
        collector, source = _make_collector(req)
        names = list(collector.output_names)
        width = len(names)
        fingerprint = {
            "format": WINDOWS_FORMAT,
            "wsiproc": __version__,
            "slide": _slide_stamp(req.slide),
            "plan": plan.to_dict(),
            "grid": [req.kernel_px, req.stride_px, req.border],
            "min_tissue": req.min_tissue,
            "model": source,
            "model_identity": collector.identity(),
            "outputs": names,
            "batch_size": req.batch_size,
            "precision": req.precision,
            "device": req.device,
            "chunk_px": req.chunk_px,
            "tile_px": tile_px,
            "patient": req.patient,
            "slide_id": slide_id,
        }
        ckpt = Checkpoint(partial_dir(req.out), fingerprint, width)
        groups = plan_groups(chunks, keep, req.batch_size)
        todo = [g for g in groups if g.index not in ckpt.done]
        resumed = sum(g.n_windows for g in groups if g.index in ckpt.done)
        n_keep_total = int(keep.sum())
        n_chunks_todo = sum(len(g.chunks) for g in todo)
        _log(
            req,
            f"{req.slide}: level {plan.level} (x{plan.level_downsample:g}), "
            f"scale {plan.scale:.4g}, grid {rows}x{cols}, {n_keep_total} windows "
            f"with tissue >= {req.min_tissue}, {n_chunks_todo} chunks to read"
            + (f", resuming after {resumed} windows" if resumed else ""),
        )
        t_stream = time.monotonic()
        collector.open(
            StreamInfo(
                req.slide,
                slide_id,
                req.patient,
                plan.level,
                plan.scale,
                plan.proc_mpp,
                req.kernel_px,
                req.stride_px,
                rows,
                cols,
                n_keep_total,
            )
        )
        pipeline.run(todo, collector, ckpt, fingerprint, width, resumed, n_keep_total)
    t_assemble = time.monotonic()
    processed = _assemble(req, grid, plan, ckpt, tissue, names, slide_id, groups)
    elapsed = time.monotonic() - started
    stream_s = t_assemble - t_stream
    meta = {
        "format": WINDOWS_FORMAT,
        "wsiproc_version": __version__,
        "slide": str(req.slide),
        "slide_id": slide_id,
        "patient": req.patient,
        "level": plan.level,
        "level_downsample": plan.level_downsample,
        "scale": plan.scale,
        "proc_mpp": plan.proc_mpp,
        "resize_factor": plan.resize_factor,
        "kernel_size": req.kernel_px,
        "stride": req.stride_px,
        "border": req.border,
        "min_tissue": req.min_tissue,
        "grid_rows": rows,
        "grid_cols": cols,
        "proc_width": plan.proc_width,
        "proc_height": plan.proc_height,
        "l0_width": info.width,
        "l0_height": info.height,
        "windows_total": rows * cols,
        "windows_processed": processed,
        "windows_skipped": rows * cols - processed,
        "model": source,
        "outputs": names,
        "output_names": list(getattr(getattr(collector, "model", None), "output_names", names)),
        "output_shape": list(getattr(getattr(collector, "model", None), "output_shape", (width,))),
        "elapsed_s": round(elapsed, 3),
        "windows_per_s": round((processed - resumed) / elapsed, 2) if elapsed > 0 else None,
        "resumed_windows": resumed,
        "timings_s": {
            "setup": round(t_stream - started, 3),
            "stream": round(stream_s, 3),
            "assemble": round(time.monotonic() - t_assemble, 3),
        },
        "stream_windows_per_s": round((processed - resumed) / stream_s, 2)
        if stream_s > 0
        else None,
        "mpp_source": plan.mpp_source,
    }
    mpath = meta_path(req.out)
    with atomic_write(mpath) as fh:
        json.dump(meta, fh, indent=1)
    csv_tmp_done = Path(req.out)
    ckpt.remove()
    _log(req, f"wrote {processed} windows to {csv_tmp_done} in {elapsed:.1f} s")
    return InferResult(csv_tmp_done, mpath, processed, rows * cols, resumed, meta)


def _fork_is_safe() -> bool:
    """Fork (fast start) only while this process runs no other thread and has loaded no
    library that keeps threads or locks (libvips, torch, OpenSlide); else spawn."""
    return (
        "fork" in mp.get_all_start_methods()
        and threading.active_count() == 1
        and not any(name in sys.modules for name in ("pyvips", "torch", "openslide"))
    )


def _make_collector(req: InferRequest) -> tuple[StreamCollector, str]:
    """The user's collector, or the model collector; with the source recorded in outputs."""
    if req.collector:
        return make_collector(req.collector), f"collector:{req.collector}"
    from ..models import BUILTIN_PREFIX, load_model, resolve_device

    # Built-in models run in numpy: do not pay torch's import for them.
    device = "cpu" if req.model.startswith(BUILTIN_PREFIX) else resolve_device(req.device)
    model = load_model(req.model, kernel_px=req.kernel_px, device=device, precision=req.precision)
    return ModelCollector(model), req.model


class _Pipeline:
    """Loader processes, the writer process, their queues and the shared-memory slots.

    Created (loaders started) before the tasks are known; :meth:`close` always tears every
    process and the shared memory down, also after errors.
    """

    def __init__(self, req: InferRequest) -> None:
        self.req = req
        self.grid: Grid | None = None
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
        self.pieces: Any = None  # created with the writer, whose start method may differ
        self.writer_status: Any = None
        self.writer: Any = None
        self.procs: list[Any] = []
        self.jobs_sent = False
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
        for slot in range(self.n_slots):
            self.free_slots.put(slot)

    def start(self, plan: LevelPlan, grid: Grid) -> None:
        """Tell the (already running) loaders what to read."""
        self.grid = grid
        job = LoaderJob(
            self.req.slide,
            self.req.reader,
            plan,
            grid,
            self.req.batch_size,
            self.pool.path,
            self.n_slots,
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
    ) -> None:
        """Feed the tasks, collect every batch in this process, let the writer checkpoint."""
        from tqdm import tqdm

        for task in todo:
            self.tasks.put(task)
        for _ in range(self.workers):
            self.tasks.put(None)
        self.sentinels_sent = True
        if not todo:
            return
        grid, pool = self.grid, self.pool
        # Decoders and torch are loaded by now: fork only if still safe, else spawn. Pieces
        # are small (values only), so a deep queue keeps the collector from ever waiting.
        wctx = mp.get_context("fork" if _fork_is_safe() else "spawn")
        self.pieces = wctx.Queue(maxsize=1024)
        self.writer_status = wctx.Queue()
        self.writer = wctx.Process(
            target=run_writer,
            name="wsiproc-writer",
            daemon=True,
            args=(
                str(ckpt.directory),
                fingerprint,
                width,
                self.pieces,
                self.writer_status,
                os.getpid(),
            ),
        )
        self.writer.start()
        progress = tqdm(
            total=total,
            initial=resumed,
            unit="win",
            desc=Path(self.req.slide).name,
            disable=self.req.quiet or not sys.stderr.isatty(),
            smoothing=0.1,
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
                n = len(msg.rows)
                piece = StreamPiece(
                    pool.view(msg.slot)[:n], msg.rows, msg.cols, grid.l0_boxes(msg.rows, msg.cols)
                )
                values = np.asarray(collector.process_piece(piece), dtype=np.float32)
                values = values.reshape(n, -1)
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
            self._put_piece(WriterClose(keep_partial=stopped_early))
            self.writer.join()
            self._raise_writer_failure()
            if self.writer.exitcode != 0:
                raise WorkerError(
                    f"{ckpt.directory}: writer exited with code {self.writer.exitcode}"
                )
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
            if self.writer is not None and self.writer.is_alive():
                try:  # after an error: let the writer exit now (complete chunks are committed)
                    self.pieces.put(WriterClose(), timeout=1.0)
                except queue_mod.Full:
                    pass
            for p in procs:
                p.join(timeout=0.5 if p is not self.writer else 5)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
            self.pool.unlink()
            queues = (
                self.jobs,
                self.tasks,
                self.free_slots,
                self.ready,
                self.pieces,
                self.writer_status,
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
        return WorkerError(f"writer process died (exit code {self.writer.exitcode})")

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
                        raise WorkerError(
                            f"loader process {p.name} died (exit code {p.exitcode})"
                        ) from None

    def _put_piece(self, msg: Any) -> None:
        """Put on the bounded writer queue; fail if the writer died meanwhile."""
        while True:
            try:
                self.pieces.put(msg, timeout=1.0)
                return
            except queue_mod.Full:
                if not self.writer.is_alive():
                    raise self._writer_died() from None


def _assemble(
    req: InferRequest,
    grid: Grid,
    plan: LevelPlan,
    ckpt: Checkpoint,
    tissue: np.ndarray,
    names: list[str],
    slide_id: str,
    groups: list[GroupTask],
) -> int:
    """Write the final CSV from the checkpointed groups, sorted by (row, col).

    Groups are in row-major chunk order, so once a group starting at window row R is loaded,
    every row above R is complete and is written out: memory holds about one band of chunks.
    """
    n = 0
    buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def flush(fh: Any, below_row: int | None) -> None:
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
                req.patient,
                slide_id,
                rows,
                cols,
                grid.l0_boxes(rows, cols),
                plan.level,
                tissue[rows, cols],
                values,
            )
        )
        n += len(rows)

    with atomic_write(req.out) as fh:
        fh.write(",".join(header(names)) + "\n")
        for group in groups:
            if group.index not in ckpt.done:
                continue  # a collector that stopped early left it out
            flush(fh, group.chunks[0].chunk.row0)
            buffer.append(ckpt.read(group.index))
        flush(fh, None)
    return n


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
