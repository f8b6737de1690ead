"""The documented extension example runs as the README says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from wsiproc.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_hotspot_collector_example_scores_windows_and_stops_after_n_hotspots(
    tiff_slide, tmp_path, monkeypatch
):
    monkeypatch.setenv("WSIPROC_HOTSPOTS", "3")
    monkeypatch.setenv("WSIPROC_HOTSPOT_DIR", str(tmp_path / "hotspots"))
    out = tmp_path / "windows.csv"
    ref = REPO / "examples" / "hotspot_collector.py"
    argv = ["infer", str(tiff_slide), "--out", str(out), "--kernel-size", "64", "--stride", "64",
            "--collector", f"{ref}:HotspotCollector", "--quiet", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0])[-1] == "nuclei_fraction"
    fractions = np.array([float(r["nuclei_fraction"]) for r in rows])
    assert ((fractions >= 0) & (fractions <= 1)).all()
    pngs = sorted((tmp_path / "hotspots").glob("*.png"))
    assert len(pngs) == 3  # is_finished() stopped collecting after three hotspots
    for png in pngs:
        assert Image.open(png).size == (64, 64)
    # Every saved hotspot is a row of the CSV, above the example's threshold.
    by_cell = {(r["row"], r["col"]): float(r["nuclei_fraction"]) for r in rows}
    for png in pngs:
        _, r, c = png.stem.rsplit("_", 2)
        assert by_cell[(r[1:], c[1:])] >= 0.15
