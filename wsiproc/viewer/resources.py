"""What the viewer holds open per slide (slide handles, heatmap raster, windows table), bounded.

One place decides when to open and when to close, so the number of open slides is bounded
(least recently viewed closed first) and a rerun that rewrites a slide's files is noticed:
each file's (mtime, size) is part of the key, and changed files are opened afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsiprocError
from ..record import WindowsRecord, read_record
from .catalog import SlideEntry
from .overlay import HeatmapRaster
from .prediction import SlidePrediction, read_prediction
from .tiles import SlidePool, SlideTiler, file_signature
from .windows import WindowTable

FILES: tuple[str, str, str, str] = ("windows.json", "windows.csv", "heatmap.tif", "heatmap_rgb.tif")
"""The patch model's result files the viewer reads (besides the slide file itself)."""

ATTENTION_FILES: tuple[str, str, str, str] = (
    "attention.json",
    "attention.csv",
    "attention.tif",
    "attention_rgb.tif",
)
"""The slide model's attention layer (``wsiproc slide-predict`` + ``heatmap``), same contract."""

PREDICTION_FILE = "slide.json"
"""The slide model's prediction, shown in the side panel."""


@dataclass(frozen=True)
class Layer:
    """A heatmap layer: its float raster and the CSV rows under it (same record)."""

    record: WindowsRecord
    raster: HeatmapRaster
    table: WindowTable


def open_layer(entry: SlideEntry, files: tuple[str, str, str, str]) -> Layer:
    """The (record, raster, table) of one layer's four files (record, CSV, float, colour)."""
    meta, csv_name, tif, rgb = files
    record = read_record(entry.file(meta))
    raster = HeatmapRaster(entry.file(tif), record, rgb_path=entry.file(rgb))
    table = WindowTable(entry.file(csv_name), record, window_pixels=raster.window_pixels)
    return Layer(record, raster, table)


@dataclass(frozen=True)
class SlideResources:
    """One slide's open objects, or why each part cannot be shown.

    ``tiler`` is None with ``slide_error`` set when the slide file cannot be opened; ``raster``
    and ``table`` are None with ``overlay_error`` set when the heatmap or windows are missing or
    broken (a failed or unfinished run): the slide is then shown without them.
    """

    entry: SlideEntry
    signature: tuple[object, ...]
    tiler: SlideTiler | None
    slide_error: str | None
    record: WindowsRecord | None
    raster: HeatmapRaster | None
    table: WindowTable | None
    overlay_error: str | None
    attention: Layer | None = None
    """The slide model's attention layer, when ``attention.json`` exists and opens."""
    prediction: SlidePrediction | None = None

    @property
    def mpp(self) -> float | None:
        """Level-0 µm per pixel: the run's (sheet or metadata), else the slide's metadata."""
        record = self.record
        if record is not None and record.proc_mpp is not None:
            return record.proc_mpp / record.scale
        return self.tiler.pool.info.mpp_x if self.tiler is not None else None

    def close(self) -> None:
        """Close the slide handles (lent ones on return)."""
        if self.tiler is not None:
            self.tiler.pool.close()


class ResourceRegistry:
    """Open :class:`SlideResources` by slide id, at most ``max_open`` slides; thread-safe.

    Must be closed.
    """

    def __init__(self, *, max_open: int, max_handles: int) -> None:
        self.max_open = max(1, int(max_open))
        self.max_handles = max_handles
        self._open: OrderedDict[str, SlideResources] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResourceRegistry({list(self._open)}, max_open={self.max_open})"

    def get(self, entry: SlideEntry) -> SlideResources:
        """The slide's resources, opened now if new or if any of its files changed."""
        slide_path = entry.slide_path()
        signature = (
            str(slide_path),
            file_signature(slide_path) if slide_path is not None else None,
            *(file_signature(entry.file(name)) for name in (*FILES, *ATTENTION_FILES)),
            file_signature(entry.file(PREDICTION_FILE)),
        )
        with self._lock:
            current = self._open.get(entry.slide_id)
            if current is not None and current.signature == signature and current.entry == entry:
                self._open.move_to_end(entry.slide_id)
                return current
            if current is not None:
                del self._open[entry.slide_id]
                current.close()
            fresh = _open(entry, slide_path, signature, self.max_handles)
            self._open[entry.slide_id] = fresh
            while len(self._open) > self.max_open:
                _, evicted = self._open.popitem(last=False)
                evicted.close()
            return fresh

    def close(self) -> None:
        """Close every open slide."""
        with self._lock:
            for resources in self._open.values():
                resources.close()
            self._open.clear()


def _open(
    entry: SlideEntry, slide_path: Path | None, signature: tuple[object, ...], max_handles: int
) -> SlideResources:
    """Open what exists of one slide; record why the rest cannot be shown."""
    tiler, slide_error = None, None
    if slide_path is None:
        slide_error = "no slide file: its level.json is missing or names a file that is gone"
    else:
        try:
            tiler = SlideTiler(SlidePool(slide_path, max_handles=max_handles))
        except WsiprocError as exc:
            slide_error = str(exc)
    record = raster = table = None
    overlay_error = None
    try:
        layer = open_layer(entry, FILES)
        record, raster, table = layer.record, layer.raster, layer.table
    except WsiprocError as exc:
        overlay_error = str(exc)
    attention = None
    if entry.file(ATTENTION_FILES[0]).is_file():
        try:
            attention = open_layer(entry, ATTENTION_FILES)
        except WsiprocError as exc:
            overlay_error = "; ".join(p for p in (overlay_error, f"attention: {exc}") if p)
    prediction = read_prediction(entry.file(PREDICTION_FILE))
    return SlideResources(
        entry, signature, tiler, slide_error, record, raster, table, overlay_error,
        attention, prediction,
    )  # fmt: skip
