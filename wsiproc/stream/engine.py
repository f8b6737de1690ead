"""The engine: one ``wsiproc infer`` run, orchestrated.

Claims the output (one writer per output), starts the process pipeline, opens the slide and
plans the run (:mod:`.plan`), resumes from the checkpoint, streams the remaining groups
through loader processes -> collector (this process) -> writer process (:mod:`.pipeline`),
then assembles the CSV (:mod:`.assemble`) and writes the run record (:mod:`wsiproc.record`).

The flow is one way: the CLI builds an :class:`~.request.InferRequest` (re-exported here for
callers), this module uses plan, pipeline, checkpoint and assemble, and none of them imports
the engine back (a test checks the package's import graph has no cycle).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import WorkerError
from ..grid import Grid
from ..level import LevelPlan, select_level
from ..record import WindowsRecord, record_path
from ..slide import Slide, SlideInfo
from .assemble import assemble_csv
from .checkpoint import Checkpoint
from .collector import ModelCollector, StreamCollector, StreamInfo, make_collector
from .gating import WindowTissue, measure_window_tissue
from .lock import OutputLock
from .pipeline import Pipeline
from .plan import (
    RunIdentity,
    StreamPlan,
    file_stamp,
    fingerprint,
    plan_stream,
    slide_stamp,
)
from .request import ON_READ_ERROR, InferRequest, validate_request

__all__ = ["ON_READ_ERROR", "InferRequest", "InferResult", "partial_dir", "run_inference"]


@dataclass
class InferResult:
    """What a finished run produced."""

    csv: Path
    meta: Path
    windows_processed: int
    windows_total: int
    resumed_windows: int
    record: WindowsRecord


def partial_dir(csv_path: str | Path) -> Path:
    """Where checkpoints of ``csv_path`` live until it is complete."""
    p = Path(csv_path)
    return p.with_name(p.name + ".partial")


def remove_stale_temp_files(csv_path: str | Path) -> list[Path]:
    """Delete temporary files that killed runs left beside the outputs; return them.

    Called only while holding the output's lock, so no live run owns them.
    """
    out = Path(csv_path)
    removed = []
    for name in (out.name, record_path(out).name):
        for tmp in out.parent.glob(f".{name}.tmp-*"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _log(req: InferRequest, text: str) -> None:
    if not req.quiet:
        print(f"wsiproc infer: {text}", file=sys.stderr, flush=True)


def _warn(text: str) -> None:
    """Printed even with --quiet: the job's log must say why a run was slower or partial."""
    print(f"wsiproc infer: warning: {text}", file=sys.stderr, flush=True)


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
        Bad slide, parameters or model, a read failure (with the region), a write failure,
        or another run writing the same output. Finished groups stay checkpointed, so
        rerunning the same command continues.
    """
    validate_request(req)
    with _TerminateOnSignal(), OutputLock(req.out):
        for tmp in remove_stale_temp_files(req.out):
            _log(req, f"removed {tmp}, left by a killed run")
        return _run_inference(req)


def _run_inference(req: InferRequest) -> InferResult:
    """Body of :func:`run_inference`, with the output claimed."""
    started = time.monotonic()
    # Loader and writer processes start first (forked before any decoder library is loaded, when
    # that is safe), so their start-up overlaps opening the slide, tissue detection and model load.
    pipeline = Pipeline(req)
    pipeline.marks["processes"] = time.monotonic()
    try:
        if pipeline.pool.note:
            _warn(pipeline.pool.note)
        return _stream(req, pipeline, started)
    finally:
        pipeline.close()


def _stream(req: InferRequest, pipeline: Pipeline, started: float) -> InferResult:
    """Plan, resume, stream, assemble, record."""
    slide_id = req.slide_id or Path(req.slide).stem
    with Slide(req.slide, reader=req.reader) as slide:
        info = slide.info
        plan = req.plan or select_level(info, req.spec)
        model_mpp = _check_model_mpp(req, plan)
        grid = Grid(
            plan.proc_width,
            plan.proc_height,
            req.kernel_px,
            req.stride_px,
            req.border,
            plan.scale,
            proc_x0=plan.proc_x0,
            proc_y0=plan.proc_y0,
        )
        pipeline.marks["open"] = time.monotonic()
        # Tile-aligned chunks when windows are read as stored (no resize): no tile decoded twice.
        tile_px = slide.tile_size(plan.level) if plan.resize_factor == 1.0 else None
        pipeline.start(plan, grid, slide.reader)
        gating, made = _tissue_and_collector(req, slide, grid, pipeline.marks)
        collector, source, device, gpu = made
        if gating.unknown and req.min_tissue > 0:
            _warn(
                f"{req.slide}: tissue unknown, every window is processed ({gating.unknown_reason})"
            )
        stream = plan_stream(
            grid,
            gating.tissue,
            ink=gating.ink,
            min_tissue=req.min_tissue,
            max_ink=req.max_ink,
            batch_size=req.batch_size,
            chunk_px=req.chunk_px,
            tile_px=tile_px,
        )
        pipeline.marks["plan"] = time.monotonic()
        # Resolved once (auto -> bf16/fp32) by the model; built-ins and collectors compute as
        # written, so auto means fp32 for them.
        precision = getattr(getattr(collector, "model", None), "precision", None) or (
            "fp32" if req.precision == "auto" else req.precision
        )
        names = list(collector.output_names)
        width = len(names)
        identity = RunIdentity(
            slide=slide_stamp(req.slide),
            plan=plan.to_dict(),
            kernel_px=req.kernel_px,
            stride_px=req.stride_px,
            border=req.border,
            min_tissue=req.min_tissue,
            max_ink=req.max_ink,
            tissue_source=gating.source,
            model=source,
            model_identity=collector.identity(),
            outputs=tuple(names),
            batch_size=req.batch_size,
            precision=precision,
            device=device,
            reader=slide.reader,
            chunk_px=req.chunk_px,
            tile_px=tile_px,
            on_read_error=req.on_read_error,
            mask=file_stamp(req.mask) if req.mask else None,
            patient=req.patient,
            slide_id=slide_id,
        )
        ckpt = Checkpoint(partial_dir(req.out), fingerprint(identity), width)
        todo = [g for g in stream.groups if g.index not in ckpt.done]
        resumed = sum(g.n_windows for g in stream.groups if g.index in ckpt.done)
        n_keep = stream.windows_to_process
        _log(
            req,
            f"{req.slide}: level {plan.level} (x{plan.level_downsample:g}), "
            f"scale {plan.scale:.4g}, grid {grid.rows}x{grid.cols}, {n_keep} windows "
            f"with tissue >= {req.min_tissue}, "
            f"{sum(len(g.chunks) for g in todo)} chunks to read, reader {slide.reader}, "
            f"device {device}"
            + (f" (GPU {gpu})" if gpu else "")
            + (f", resuming after {resumed} windows" if resumed else ""),
        )
        if n_keep == 0:
            _warn(f"{req.slide}: no window to process ({_why_no_windows(grid, req)})")
        t_stream, cpu_stream = time.monotonic(), time.process_time()
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
                grid.rows,
                grid.cols,
                n_keep,
            )
        )
        pipeline.run(
            todo, collector, ckpt, ckpt.fingerprint, width, resumed, n_keep, ckpt.add_read_failures
        )
    t_assemble, cpu_stream = time.monotonic(), time.process_time() - cpu_stream
    processed = _assemble_outputs(
        req, plan, stream, ckpt, names, slide_id, info=info, model=getattr(collector, "model", None)
    )
    read_errors = ckpt.read_failures()
    if read_errors.windows:
        _warn(
            f"{req.slide}: {read_errors.windows} windows could not be read "
            f"(NaN outputs; regions in {record_path(req.out)})"
        )
    elapsed = time.monotonic() - started
    stream_s = t_assemble - t_stream
    model = getattr(collector, "model", None)
    record = WindowsRecord(
        grid_rows=grid.rows,
        grid_cols=grid.cols,
        kernel_size=req.kernel_px,
        stride=req.stride_px,
        proc_mpp=plan.proc_mpp,
        scale=plan.scale,
        outputs=tuple(names),
        output_names=tuple(getattr(model, "output_names", names)),
        output_shape=tuple(getattr(model, "output_shape", (width,))),
        wsiproc_version=__version__,
        slide=str(req.slide),
        slide_id=slide_id,
        patient=req.patient,
        level=plan.level,
        level_downsample=plan.level_downsample,
        resize_factor=plan.resize_factor,
        border=req.border,
        min_tissue=req.min_tissue,
        max_ink=req.max_ink,
        tissue_source=gating.source,
        tissue_unknown=gating.unknown,
        tissue_unknown_reason=gating.unknown_reason,
        proc_width=plan.proc_width,
        proc_height=plan.proc_height,
        l0_width=info.width,
        l0_height=info.height,
        windows_total=grid.rows * grid.cols,
        windows_processed=processed,
        windows_skipped=grid.rows * grid.cols - processed,
        model=source,
        model_mpp=model_mpp,
        model_input_size=getattr(model, "input_size", None),
        reader=identity.reader,
        reader_reason=info.reader_reason,
        proc_x0=grid.proc_x0,
        proc_y0=grid.proc_y0,
        l0_bounds_x=info.l0_bounds.x,
        l0_bounds_y=info.l0_bounds.y,
        l0_bounds_width=info.l0_bounds.width,
        l0_bounds_height=info.l0_bounds.height,
        device=device,
        gpu=gpu,
        precision=precision,
        compiled=getattr(model, "compiled", None),
        mpp_source=plan.mpp_source,
        read_errors=read_errors,
        elapsed_s=round(elapsed, 3),
        windows_per_s=round((processed - resumed) / elapsed, 2) if elapsed > 0 else None,
        stream_windows_per_s=round((processed - resumed) / stream_s, 2) if stream_s > 0 else None,
        resumed_windows=resumed,
        timings_s={
            "setup": round(t_stream - started, 3),
            **_setup_timings(pipeline.marks, started, t_stream),
            "stream": round(stream_s, 3),
            "stream_collector": round(pipeline.collector_s, 3),
            # CPU seconds of this process (the model's threads included) during the stream:
            # against a model's CPU-seconds alone, what the stream costs whatever the VM gives
            "stream_cpu": round(cpu_stream, 3),
            "assemble": round(time.monotonic() - t_assemble, 3),
        },
    )
    mpath = record_path(req.out)
    record.write(mpath)
    ckpt.remove()
    _log(req, f"wrote {processed} windows to {req.out} in {elapsed:.1f} s")
    return InferResult(Path(req.out), mpath, processed, grid.rows * grid.cols, resumed, record)


def _assemble_outputs(
    req: InferRequest,
    plan: LevelPlan,
    stream: StreamPlan,
    ckpt: Checkpoint,
    names: list[str],
    slide_id: str,
    *,
    info: SlideInfo,
    model: Any,
) -> int:
    """Write the run's final output files from the checkpoint alone (the same after any
    number of resumes); return the number of windows written.

    ``req.output`` picks them: ``csv`` (windows.csv) or ``h5`` (the features file of
    :mod:`wsiproc.features`, whose attributes need the slide's metadata and the encoder).
    """
    if req.output == "h5":
        from ..features.h5file import assemble_h5

        return assemble_h5(
            req.out,
            grid=stream.grid,
            plan=plan,
            info=info,
            ckpt=ckpt,
            groups=stream.groups,
            tissue=stream.tissue,
            encoder=model,
            slide_id=slide_id,
        )
    return assemble_csv(
        req.out,
        grid=stream.grid,
        level=plan.level,
        ckpt=ckpt,
        groups=stream.groups,
        tissue=stream.tissue,
        names=names,
        patient=req.patient,
        slide_id=slide_id,
    )


def _tissue_and_collector(
    req: InferRequest, slide: Slide, grid: Grid, marks: dict[str, float]
) -> tuple[WindowTissue, tuple[StreamCollector, str, str, str | None]]:
    """Tissue detection (thumbnail, tissue and ink masks) in a thread while this thread loads
    the model: on a real model both take a good part of a second, and neither needs the
    other. Errors keep their order: a slide whose tissue cannot be measured fails as such even
    if its model would not load either.

    Records in ``marks`` the seconds of each (``tissue_s``, ``model_s``) and when both were
    done (``tissue_model``).
    """
    t0 = time.monotonic()

    def tissue() -> WindowTissue:
        try:
            return measure_window_tissue(
                slide,
                grid,
                min_tissue=req.min_tissue,
                mask=req.mask,
                skip_read_errors=req.on_read_error == "skip",
            )
        finally:
            marks["tissue_s"] = time.monotonic() - t0

    with ThreadPoolExecutor(1, thread_name_prefix="wsiproc-tissue") as pool:
        measured = pool.submit(tissue)
        model_error: Exception | None = None
        try:
            made = _make_collector(req)
        except Exception as exc:  # noqa: BLE001 - raised below, after a tissue error if any
            model_error = exc
        marks["model_s"] = time.monotonic() - t0
        if isinstance(model_error, WorkerError):  # terminated (SIGTERM): that is the news
            raise model_error
        gating = measured.result()
    marks["tissue_model"] = time.monotonic()
    if model_error is not None:
        raise model_error
    return gating, made


def _setup_timings(marks: dict[str, float], started: float, t_stream: float) -> dict[str, float]:
    """Seconds of each set-up step, in order (``setup_processes``, ``setup_open``, ...), and
    of the stream's first batch: where a small slide's run time goes. Tissue detection and
    the model load overlap: ``setup_tissue_model`` is their wall time together,
    ``setup_tissue`` and ``setup_model`` each one's own."""
    out = {}
    previous = started
    for name in ("processes", "open", "tissue_model", "plan"):
        if name in marks:
            out[f"setup_{name}"] = round(marks[name] - previous, 3)
            previous = marks[name]
    for name in ("tissue", "model"):
        if f"{name}_s" in marks:
            out[f"setup_{name}"] = round(marks[f"{name}_s"], 3)
    out["setup_checkpoint"] = round(t_stream - previous, 3)
    if "first_batch" in marks:
        out["stream_first_batch"] = round(marks["first_batch"] - t_stream, 3)
    if "writer_close" in marks:
        out["stream_writer_close"] = round(marks["writer_close"] - marks["last_batch"], 3)
    return out


def _why_no_windows(grid: Grid, req: InferRequest) -> str:
    """The reason a run has nothing to process, for its warning."""
    if not (grid.rows and grid.cols):
        return (
            f"the slide is {grid.proc_width}x{grid.proc_height} px at the processing "
            f"resolution, smaller than one {req.kernel_px} px window"
        )
    return f"no window has tissue >= {req.min_tissue} and ink <= {req.max_ink}"


def _check_model_mpp(req: InferRequest, plan: LevelPlan) -> float | None:
    """The model's declared training mpp, after refusing a mismatched plan (before any work)."""
    if req.collector:
        return None
    from ..models import check_mpp, declared_mpp

    model_mpp = declared_mpp(req.model)
    if not req.allow_mpp_mismatch:
        check_mpp(req.model, model_mpp, plan.proc_mpp, req.slide)
    return model_mpp


def _make_collector(req: InferRequest) -> tuple[StreamCollector, str, str, str | None]:
    """The user's collector or the model collector, its source, the device it runs on
    (``cpu``, ``cuda:K`` or ``collector``) and, on a GPU, that GPU's physical id."""
    if req.collector:
        return make_collector(req.collector), f"collector:{req.collector}", "collector", None
    from ..models import BUILTIN_PREFIX, load_model, resolve_device

    features = req.output == "h5"
    # Built-in models run in numpy: do not pay torch's import for them.
    numpy_model = req.model.startswith(BUILTIN_PREFIX) and not features
    device = "cpu" if numpy_model else resolve_device(req.device)
    gpu = None
    if device == "cuda":  # a free GPU of this machine, held until the process exits
        from ..gpus import claim_process_gpu

        claim = claim_process_gpu()
        if claim.note:
            _warn(claim.note)
        device, gpu = claim.device, claim.device_id
    if features:  # a patch encoder (sidecar-validated), same collector
        from ..batch.keep import load_once
        from ..features.encoder import Encoder

        cache = Path(req.compile_cache) if req.compile_cache else None
        # Loaded once per process inside a batch of slides (wsiproc batch), else per call.
        encoder = load_once(
            ("encoder", req.model, device, req.precision, cache, req.batch_size),
            lambda: Encoder(
                req.model,
                device=device,
                precision=req.precision,
                compile_cache=cache,
                batch_size=req.batch_size,
            ),
            f"encoder {req.model} on {device}",
        )
        return ModelCollector(encoder), req.model, device, gpu
    model = load_model(
        req.model,
        kernel_px=req.kernel_px,
        device=device,
        precision=req.precision,
        compile_cache=Path(req.compile_cache) if req.compile_cache else None,
        batch_size=req.batch_size,
    )
    return ModelCollector(model), req.model, device, gpu
