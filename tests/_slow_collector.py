"""User collectors for the engine tests, loaded through ``--collector``.

``SlowMeanRGB`` computes what ``builtin:mean-rgb`` computes but sleeps per piece, so that a run
is slow enough to be killed mid-way; the sleep comes from ``WSIPROC_TEST_SLEEP`` (seconds,
default 0.05), which is not part of the resume fingerprint, so a resumed rerun may be fast.

``StopEarly`` stops after ``LIMIT`` windows and records every window it processed.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

import numpy as np

from wsiproc.stream import StreamCollector, StreamInfo, StreamPiece

SLEEP_ENV = "WSIPROC_TEST_SLEEP"


def mean_rgb(pixels: np.ndarray) -> np.ndarray:
    """Mean R, G, B of each window, computed as ``builtin:mean-rgb`` does."""
    n = pixels.shape[0]
    return pixels.reshape(n, -1, 3).mean(axis=1, dtype=np.float64).astype(np.float32)


class SlowMeanRGB(StreamCollector):
    """Mean RGB, slowly."""

    output_names = ("mean_r", "mean_g", "mean_b")

    def process_piece(self, piece: StreamPiece) -> np.ndarray:
        time.sleep(float(os.environ.get(SLEEP_ENV, "0.05")))
        return mean_rgb(piece.pixels)


class StopEarly(StreamCollector):
    """Mean red and green of each window; finished once ``LIMIT`` windows were processed."""

    output_names = ("red", "green")
    LIMIT: ClassVar[int] = 20
    processed: ClassVar[list[tuple[int, int]]] = []
    info: ClassVar[StreamInfo | None] = None

    def open(self, info: StreamInfo) -> None:
        type(self).info = info
        type(self).processed = []

    def process_piece(self, piece: StreamPiece) -> np.ndarray:
        type(self).processed.extend(zip(piece.rows.tolist(), piece.cols.tolist(), strict=True))
        return mean_rgb(piece.pixels)[:, :2]

    def is_finished(self) -> bool:
        return len(type(self).processed) >= self.LIMIT


class ReusedBuffer(StreamCollector):
    """Mean RGB written into one output buffer that is reused for every piece, as a
    collector with a preallocated (pinned, say) output array does."""

    output_names = ("mean_r", "mean_g", "mean_b")

    def __init__(self) -> None:
        self.buffer = np.zeros((0, 3), dtype=np.float32)

    def process_piece(self, piece: StreamPiece) -> np.ndarray:
        time.sleep(float(os.environ.get(SLEEP_ENV, "0")))
        n = piece.pixels.shape[0]
        if self.buffer.shape[0] < n:
            self.buffer = np.zeros((n, 3), dtype=np.float32)
        out = self.buffer[:n]
        out[...] = mean_rgb(piece.pixels)
        return out
