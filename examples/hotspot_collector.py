"""Example StreamCollector: save the first N nuclei-rich windows as PNGs, then stop.

Shows both halves of the extension API: ``process_piece`` turns a batch of windows into one
output row per window (here the fraction of nuclei-like pixels), and ``is_finished`` ends
collecting early (here once ``WSIPROC_HOTSPOTS`` windows above the threshold were saved).

Run it on one slide:

    wsiproc infer SLIDE --out hot/windows.csv --kernel-size 128 --stride 128 --mpp 0.5 \\
        --collector examples/hotspot_collector.py:HotspotCollector

The CSV gets a ``nuclei_fraction`` column; the PNGs land in ``hot/hotspots/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from wsiproc.stream import StreamCollector, StreamInfo, StreamPiece

THRESHOLD = 0.15
"""Nuclei-like pixel fraction above which a window is a hotspot."""


class HotspotCollector(StreamCollector):
    """Scores each window by its nuclei-like pixel fraction and saves the first hotspots."""

    output_names = ("nuclei_fraction",)

    def __init__(self) -> None:
        self.wanted = int(os.environ.get("WSIPROC_HOTSPOTS", "10"))
        self.saved = 0
        self.outdir = Path(os.environ.get("WSIPROC_HOTSPOT_DIR", "hotspots"))

    def open(self, info: StreamInfo) -> None:
        self.slide_id = info.slide_id
        self.outdir.mkdir(parents=True, exist_ok=True)

    def process_piece(self, piece: StreamPiece) -> np.ndarray:
        px = piece.pixels.astype(np.int16)
        r, g, b = px[..., 0], px[..., 1], px[..., 2]
        # Hematoxylin-stained nuclei: dark, blue-purple (blue above green, red not dominant).
        nuclei = (b > g + 20) & (r < 170) & (g < 120)
        frac = nuclei.reshape(len(px), -1).mean(axis=1)
        for i in np.flatnonzero(frac >= THRESHOLD):
            if self.saved >= self.wanted:
                break
            name = f"{self.slide_id}_r{piece.rows[i]}_c{piece.cols[i]}.png"
            Image.fromarray(piece.pixels[i]).save(self.outdir / name)
            self.saved += 1
        return frac[:, None].astype(np.float32)

    def is_finished(self) -> bool:
        return self.saved >= self.wanted
