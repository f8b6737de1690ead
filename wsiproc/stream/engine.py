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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_write
from ..errors import ConfigError, SlideReadError, WorkerError, WsiprocError
from ..grid import Grid, plan_chunks
from ..level import LevelPlan, LevelSpec, select_level
from ..slide import Slide
from ..table import format_rows, header
from ..tissue import tissue_mask, window_tissue_fractions
from .checkpoint import Checkpoint
from .collector import ModelCollector, StreamCollector, StreamInfo, StreamPiece, make_collector
from .loader import LoaderJob, run_loader
from .messages import ChunkTask, LoaderDone, LoaderFailed, ProcessedPiece, WindowBatch, WriterClose
from .shm import SlotPool
from .writer import run_writer

THUMBNAIL_PX = 2048
"""Longer side of the thumbnail tissue is detected on."""

WINDOWS_FORMAT = "wsiproc-windows/1"


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


def run_inference(req: InferRequest) -> InferResult:
    """Run the whole stream for one slide; see the module docstring.

    Raises
    ------
    WsiprocError
        Bad slide, parameters or model, a read failure (with the region) or a write failure.
        Finished chunks stay checkpointed, so rerunning the same command continues.
    """
    _validate(req)
    started = time.monotonic()
    slide_id = req.slide_id or Path(req.slide).stem
    with Slide(req.slide, reader=req.reader) as slide:
        info = slide.info
        plan = req.plan or select_level(info, req.spec)
        grid = Grid(plan.proc_width, plan.proc_height, req.kernel_px, req.stride_px, req.border,
                    plan.scale)
        rows, cols = grid.rows, grid.cols
        tissue = np.zeros((rows, cols), dtype=np.float32)
        if rows and cols:
            thumb = slide.thumbnail_rgb(THUMBNAIL_PX)
            mask = tissue_mask(thumb)
            sx, sy = info.width / mask.shape[1], info.height / mask.shape[0]
            rr, cc = np.mgrid[0:rows, 0:cols]
            boxes = grid.l0_boxes(rr.ravel(), cc.ravel())
            tissue = window_tissue_fractions(mask, sx, sy, boxes).reshape(rows, cols)
    # Tissue fractions are rounded as in the CSV so the threshold sees what the user sees.
    tissue = np.round(tissue, 4).astype(np.float32)
    keep = tissue >= req.min_tissue if req.min_tissue > 0 else np.ones_like(tissue, dtype=bool)

    collector: StreamCollector
    if req.collector:
        collector = make_collector(req.collector)
        source = f"collector:{req.collector}"
    else:
        from ..models import load_model, resolve_device

        device = resolve_device(req.device)
        model = load_model(req.model, kernel_px=req.kernel_px, device=device,
                           precision=req.precision)
        collector = ModelCollector(model)
        source = req.model
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
        "patient": req.patient,
        "slide_id": slide_id,
    }
    ckpt = Checkpoint(partial_dir(req.out), fingerprint, width)
    chunks = plan_chunks(grid, req.chunk_px)
    todo = []
    resumed = 0
    for chunk in chunks:
        sub = keep[chunk.row0 : chunk.row0 + chunk.n_rows, chunk.col0 : chunk.col0 + chunk.n_cols]
        n_keep = int(sub.sum())
        if n_keep == 0:
            continue
        if chunk.index in ckpt.done:
            resumed += n_keep
            continue
        todo.append(ChunkTask(chunk, np.ascontiguousarray(sub)))
    n_keep_total = int(keep.sum())
    _log(req, f"{req.slide}: level {plan.level} (x{plan.level_downsample:g}), "
              f"scale {plan.scale:.4g}, grid {rows}x{cols}, {n_keep_total} windows with tissue "
              f">= {req.min_tissue}, {len(todo)} chunks to read"
              + (f", resuming after {resumed} windows" if resumed else ""))
    t_stream = time.monotonic()
    collector.open(StreamInfo(req.slide, slide_id, req.patient, plan.level, plan.scale,
                              plan.proc_mpp, req.kernel_px, req.stride_px, rows, cols,
                              n_keep_total))
    if todo:
        _stream(req, plan, grid, todo, collector, ckpt, fingerprint, width, resumed,
                n_keep_total)
    t_assemble = time.monotonic()
    processed = _assemble(req, grid, plan, ckpt, tissue, names, slide_id)
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
        "output_shape": list(getattr(getattr(collector, "model", None), "output_shape",
                                     (width,))),
        "elapsed_s": round(elapsed, 3),
        "windows_per_s": round((processed - resumed) / elapsed, 2) if elapsed > 0 else None,
        "resumed_windows": resumed,
        "timings_s": {
            "setup": round(t_stream - started, 3),
            "stream": round(stream_s, 3),
            "assemble": round(time.monotonic() - t_assemble, 3),
        },
        "stream_windows_per_s": round((processed - resumed) / stream_s, 2) if stream_s > 0
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


def _stream(
    req: InferRequest,
    plan: LevelPlan,
    grid: Grid,
    todo: list[ChunkTask],
    collector: StreamCollector,
    ckpt: Checkpoint,
    fingerprint: dict[str, Any],
    width: int,
    resumed: int,
    total: int,
) -> None:
    """Run loaders, collect in this process, write in the writer process."""
    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    workers = min(req.workers, len(todo))
    n_slots = 2 * workers + 1
    k = grid.kernel_px
    pool = SlotPool.create(n_slots, (req.batch_size, k, k, 3))
    tasks = ctx.Queue()
    free_slots = ctx.Queue()
    ready = ctx.Queue(maxsize=n_slots + workers)
    pieces = ctx.Queue(maxsize=64)
    writer_status = ctx.Queue()
    for slot in range(n_slots):
        free_slots.put(slot)
    for task in todo:
        tasks.put(task)
    for _ in range(workers):
        tasks.put(None)
    job = LoaderJob(req.slide, req.reader, plan, grid, req.batch_size, pool.path, n_slots,
                    os.getpid())
    procs: list[Any] = []
    writer = ctx.Process(target=run_writer, name="wsiproc-writer",
                         args=(str(ckpt.directory), fingerprint, width, pieces, writer_status),
                         daemon=True)
    progress = tqdm(total=total, initial=resumed, unit="win", desc=Path(req.slide).name,
                    disable=req.quiet or not sys.stderr.isatty(), smoothing=0.1)
    try:
        writer.start()
        for w in range(workers):
            p = ctx.Process(target=run_loader, name=f"wsiproc-loader-{w}",
                            args=(w, job, tasks, free_slots, ready), daemon=True)
            p.start()
            procs.append(p)
        running = workers
        while running:
            msg = _get_checked(ready, procs, writer, writer_status)
            if isinstance(msg, LoaderDone):
                running -= 1
                continue
            if isinstance(msg, LoaderFailed):
                if msg.kind == "read" and msg.region is not None:
                    raise SlideReadError(msg.path, msg.region, msg.message.rsplit(": ", 1)[-1])
                raise WorkerError(msg.message)
            assert isinstance(msg, WindowBatch)
            n = len(msg.rows)
            piece = StreamPiece(pool.view(msg.slot)[:n], msg.rows, msg.cols,
                                grid.l0_boxes(msg.rows, msg.cols))
            values = np.asarray(collector.process_piece(piece), dtype=np.float32).reshape(n, -1)
            if values.shape[1] != width:
                raise WorkerError(f"collector returned {values.shape[1]} values per window, "
                                  f"expected {width} ({', '.join(collector.output_names)})")
            free_slots.put(msg.slot)
            _put_checked(pieces, ProcessedPiece(msg.chunk_index, msg.batch_index,
                                                msg.n_batches, msg.rows, msg.cols, values),
                         writer, writer_status)
            progress.update(n)
            if collector.is_finished():
                break
        _put_checked(pieces, WriterClose(), writer, writer_status)
        writer.join()
        _raise_writer_failure(writer_status)
        if writer.exitcode != 0:
            raise WorkerError(f"{ckpt.directory}: writer exited with code {writer.exitcode}")
        for p in procs:
            p.join(timeout=5)
    finally:
        progress.close()
        for p in [*procs, writer]:
            if p.is_alive():
                p.terminate()
        for p in [*procs, writer]:
            if p.pid is not None:
                p.join(timeout=5)
        pool.unlink()
        for q in (tasks, free_slots, ready, pieces, writer_status):
            q.cancel_join_thread()
            q.close()
    ckpt.reload()  # what the writer process committed


def _raise_writer_failure(status: Any) -> None:
    try:
        failed = status.get_nowait()
    except queue_mod.Empty:
        return
    raise WsiprocError(failed.message)


def _get_checked(ready: Any, procs: list[Any], writer: Any, writer_status: Any) -> Any:
    """Next loader message; a dead loader or writer becomes an error instead of a hang."""
    while True:
        try:
            return ready.get(timeout=1.0)
        except queue_mod.Empty:
            pass
        if not writer.is_alive():
            _raise_writer_failure(writer_status)
            raise WorkerError(f"writer process died (exit code {writer.exitcode})")
        for p in procs:
            if not p.is_alive() and p.exitcode not in (0, None):
                try:  # its failure message may still be in flight
                    return ready.get(timeout=1.0)
                except queue_mod.Empty:
                    raise WorkerError(
                        f"loader process {p.name} died (exit code {p.exitcode})"
                    ) from None


def _put_checked(q: Any, msg: Any, writer: Any, writer_status: Any) -> None:
    """Put on the bounded writer queue; fail if the writer died meanwhile."""
    while True:
        try:
            q.put(msg, timeout=1.0)
            return
        except queue_mod.Full:
            if not writer.is_alive():
                _raise_writer_failure(writer_status)
                raise WorkerError(f"writer process died (exit code {writer.exitcode})") from None


def _assemble(
    req: InferRequest,
    grid: Grid,
    plan: LevelPlan,
    ckpt: Checkpoint,
    tissue: np.ndarray,
    names: list[str],
    slide_id: str,
) -> int:
    """Write the final CSV from the checkpointed chunks, band by band, sorted by (row, col).

    Memory holds one band of chunks (a strip of chunk height across the slide) at a time.
    """
    chunks = plan_chunks(grid, req.chunk_px)
    bands: dict[int, list[int]] = {}
    for chunk in chunks:
        if chunk.index in ckpt.done:
            bands.setdefault(chunk.row0, []).append(chunk.index)
    n = 0
    with atomic_write(req.out) as fh:
        fh.write(",".join(header(names)) + "\n")
        for row0 in sorted(bands):
            parts = [ckpt.read(i) for i in bands[row0]]
            rows = np.concatenate([p[0] for p in parts]).astype(np.int64)
            cols = np.concatenate([p[1] for p in parts]).astype(np.int64)
            values = np.concatenate([p[2] for p in parts])
            order = np.lexsort((cols, rows))
            rows, cols, values = rows[order], cols[order], values[order]
            fh.write(format_rows(req.patient, slide_id, rows, cols, grid.l0_boxes(rows, cols),
                                 plan.level, tissue[rows, cols], values))
            n += len(rows)
    return n
