"""Generated per-slide records of a run of any size, for the cohort report's tests.

What ``wsiproc report`` reads, in the workflow's layout, without running a stage: the markers
:mod:`wsiproc.cohort` checks (``level.json``, ``windows.json``, ``heatmap_rgb.tif``,
``qc.json``, written in chain order), a ``qc.json`` with QC numbers, ``qc.html`` and a small
``thumbnail.png``. A few slides fail (their infer log holds an ``error:`` line and
``windows.json`` is missing) and a few are not run (no files). Thumbnails are hard links to a
handful of PNGs written once, so 10,000 slides take seconds, not minutes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsiproc.cohort import FAILED, FLAGGED, NOT_RUN, OK, Layout
from wsiproc.qc import QC_FORMAT

SLIDES_PER_PATIENT = 3
THUMB_SIZES = ((48, 32), (40, 40), (32, 48), (56, 30))
"""(width, height) of the generated thumbnails, used in turn."""


@dataclass(frozen=True)
class Records:
    """A generated run: its sheet and folders, and each slide's expected status."""

    root: Path
    sheet: Path
    layout: Layout
    expected: dict[str, tuple[str, str]]
    """slide id -> (patient, status)."""

    def report_argv(self, out_html: Path | None = None) -> list[str]:
        """``wsiproc report`` arguments (without the stage), report.html in ``results``."""
        html = out_html or self.layout.report_html
        return [
            *("--sheet", str(self.sheet), "--results", str(self.layout.results)),
            *("--logs", str(self.layout.logs), "--out-html", str(html)),
            *("--out-tsv", str(self.layout.summary_tsv)),
        ]


def status_of(index: int, n: int) -> str:
    """The designed status of slide ``index`` of ``n``: about 1 % failed and 1 % not run."""
    if index % 97 == 5 or index == n - 1:
        return FAILED
    if index % 101 == 7:
        return NOT_RUN
    return FLAGGED if index % 7 == 3 else OK


def _thumbnails(folder: Path) -> list[Path]:
    """A few small tissue-pink PNGs of different shapes, written once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(THUMB_SIZES):
        pixels = np.full((height, width, 3), 245, dtype=np.uint8)
        y, x = np.ogrid[:height, :width]
        blob = ((x - width / 2) / (width / 2.6)) ** 2 + ((y - height / 2) / (height / 2.6)) ** 2
        tissue = (blob < 1) & (rng.random((height, width)) < 0.9)
        pixels[tissue] = (214 - 10 * i, 120 + 8 * i, 170)
        paths.append(folder / f"thumb{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _qc_record(index: int, status: str) -> str:
    """A ``qc.json`` with the numbers the report shows."""
    record = {
        "format": QC_FORMAT,
        "flags": ["pen_marks"] if status == FLAGGED else [],
        "level": index % 3,
        "proc_mpp": 0.5 * (1 + index % 3),
        "mpp_source": "metadata",
        "windows_total": 1000 + index % 500,
        "windows_processed": 900 + (index * 37) % 400,
        "windows_skipped": 100,
        "tissue_percent": round(10 + (index * 13) % 80 + 0.25, 2),
        "blur_score": round(50 + (index * 7) % 300 + 0.5, 1),
        "pen_fraction": round(((index * 11) % 100) / 1000, 3),
        "runtime_s": round(5 + (index * 17) % 200 + 0.1, 1),
        "windows_per_s": round(100 + (index * 29) % 900 + 0.5, 1),
        "max_rss_mb": 400.0,
    }
    return json.dumps(record)


def write_records(root: Path, n: int) -> Records:
    """``n`` slides of ``n / 3`` patients under ``root`` (results, logs, samples.tsv)."""
    layout = Layout(root / "results", root / "logs")
    thumbs = _thumbnails(root / "thumbs")
    expected = {}
    lines = ["patient\tslide\tpath\tmpp\n"]
    for index in range(n):
        patient, slide = f"P{index // SLIDES_PER_PATIENT:05d}", f"S{index:05d}"
        status = status_of(index, n)
        expected[slide] = (patient, status)
        lines.append(f"{patient}\t{slide}\tslides/{slide}.svs\t\n")
        if status == NOT_RUN:
            continue
        folder = layout.slide_file(patient, slide, "")
        folder.mkdir(parents=True)
        os.link(thumbs[index % len(thumbs)], folder / "thumbnail.png")
        (folder / "level.json").write_bytes(b"{}")
        if status == FAILED:
            log = layout.slide_log("infer", patient, slide)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"error: slides/{slide}.svs: corrupt or truncated tile\n")
            continue
        for marker in ("windows.json", "heatmap_rgb.tif", "qc.html"):
            (folder / marker).write_bytes(b"{}")
        (folder / "qc.json").write_text(_qc_record(index, status))
    sheet = root / "samples.tsv"
    sheet.write_text("".join(lines))
    return Records(root, sheet, layout, expected)
