"""A small workflow run for the viewer's tests, and a real ``wsiproc view`` process over it.

The run is made stage by stage with the same commands and the same layout as the workflow's
rules (``{results}/{patient}/{slide}/…``, ``{logs}/{rule}/{patient}/{slide}.log``), without
Snakemake's start-up: four slides of two patients, one of each status the index shows.

``KNOWN`` has a heatmap known in advance: 64-pixel cells of flat, saturated colour whose red
grows with the column and green with the row, so with 64-pixel windows (stride 64, 0.5 µm/px,
read at level 0) every window is one cell and ``mean_r`` is its red. Glass cells (column 5,
row 0 and the bottom-right corner, all touching the border so tissue detection never fills
them as holes) have no window.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsiproc import synth
from wsiproc.cli import main

CELL_PX = 64
KNOWN_GRID = (12, 16)  # rows, cols
GLASS_RGB = (242, 242, 242)
MPP = 0.5


def known_cell_rgb(row: int, col: int) -> tuple[int, int, int] | None:
    """The flat colour of cell (row, col) of ``KNOWN``, None for glass."""
    if col == 5 or row == 0 or (row >= 8 and col >= 11):
        return None
    return 100 + 9 * col, 20 + 6 * row, 200


def known_image() -> np.ndarray:
    """Level-0 pixels of ``KNOWN``: 1024×768."""
    rows, cols = KNOWN_GRID
    image = np.empty((rows * CELL_PX, cols * CELL_PX, 3), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            rgb = known_cell_rgb(r, c) or GLASS_RGB
            image[r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX] = rgb
    return image


@dataclass(frozen=True)
class ViewerRun:
    """Where the run is: its results, logs, sample sheet and slide files by slide id."""

    results: Path
    logs: Path
    sheet: Path
    slides: dict[str, tuple[str, Path]]  # slide id -> (patient, slide file)


def _stage(log: Path, argv: list[str]) -> int:
    """Run one ``wsiproc`` stage in-process with its output in ``log``, as a rule does."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    log.write_text(out.getvalue(), encoding="utf-8")
    return code


def build_run(root: Path) -> ViewerRun:
    """Write the slides, run every stage of every slide (failures included), then the report."""
    slides_dir, results, logs = root / "slides", root / "results", root / "logs"
    slides_dir.mkdir(parents=True)
    known = synth.write_pyramidal_tiff(slides_dir / "known.tif", known_image(), mpp=MPP)
    tissue = synth.tissue_image(1200, 900, seed=21)
    second = synth.write_svs(slides_dir / "second.svs", tissue, mpp=MPP, magnification=20)
    glass = np.full((512, 640, 3), GLASS_RGB, dtype=np.uint8)
    blank = synth.write_pyramidal_tiff(slides_dir / "glass.tif", glass, mpp=MPP)
    empty = slides_dir / "empty.svs"
    empty.write_bytes(b"")
    slides = {
        "KNOWN": ("P1", known),
        "SECOND": ("P1", second),
        "GLASS": ("P2", blank),
        "EMPTY": ("P2", empty),
    }
    sheet = root / "samples.tsv"
    lines = ["patient\tslide\tpath"] + [f"{p}\t{s}\t{path}" for s, (p, path) in slides.items()]
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for slide_id, (patient, path) in slides.items():
        out = results / patient / slide_id
        out.mkdir(parents=True)
        level = out / "level.json"
        commands = [
            ("select_level", ["level", str(path), "--out", str(level), "--mpp", str(MPP),
                              "--thumbnail", str(out / "thumbnail.png"),
                              "--mask", str(out / "mask.png")]),
            ("infer", ["infer", str(path), "--out", str(out / "windows.csv"), "--plan",
                       str(level), "--kernel-size", str(CELL_PX), "--stride", str(CELL_PX),
                       "--model", "builtin:mean-rgb", "--workers", "1", "--patient", patient,
                       "--slide-id", slide_id, "--quiet"]),
            ("heatmap", ["heatmap", str(out / "windows.csv"), "--out", str(out / "heatmap.tif"),
                         "--rgb-out", str(out / "heatmap_rgb.tif"),
                         "--geojson", str(out / "windows.geojson")]),
            ("qc", ["qc", str(path), "--level-json", str(level),
                    "--windows", str(out / "windows.csv"), "--out", str(out / "qc.json"),
                    "--html", str(out / "qc.html")]),
        ]  # fmt: skip
        for rule, argv in commands:
            if _stage(logs / rule / patient / f"{slide_id}.log", argv) != 0:
                break
    code = _stage(
        logs / "report" / "report.log",
        ["report", "--sheet", str(sheet), "--results", str(results), "--logs", str(logs),
         "--out-html", str(results / "report.html"), "--out-tsv", str(results / "summary.tsv")],
    )  # fmt: skip
    assert code == 0, (logs / "report" / "report.log").read_text()
    return ViewerRun(results, logs, sheet, slides)


URL_LINE = re.compile(r"open (http://\S+)")


class ViewerProcess:
    """``python -m wsiproc view RESULTS --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, results: Path, *extra: str, timeout_s: float = 60) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsiproc", "view", str(results), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # SIGINT as in a terminal, even when the tests run in a background job (which
            # inherits SIGINT ignored): the Ctrl-C test sends it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url(timeout_s)

    def _read(self) -> None:
        """Collect stdout lines (so the pipe never fills)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put("")

    def _wait_for_url(self, timeout_s: float) -> str:
        """The URL the server prints when it listens."""
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                self.stop()
                raise TimeoutError("wsiproc view printed no URL") from None
            if line == "":
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"wsiproc view exited {self.proc.wait()}: {err}")
            match = URL_LINE.search(line)
            if match:
                return match.group(1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        """Send ``sig`` and wait for the exit code (and for its last output line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout=10)
        return code
