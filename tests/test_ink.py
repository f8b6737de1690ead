"""Marker ink is not tissue: the level stage's mask leaves it out, and inference never runs on
windows mostly covered by it, over tissue or over glass, whatever the ink's colour.

Slides are rendered with a known ground truth (:func:`wsiproc.synth.render_slide`), written as
real pyramidal TIFFs and run through ``wsiproc level`` and ``wsiproc infer --mask``.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsiproc import synth
from wsiproc.maskfile import read_mask

WIDTH, HEIGHT, KERNEL = 3000, 2000, 100


def wsiproc(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wsiproc", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def window_means(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Fraction of ``mask`` (level 0) under each KERNEL×KERNEL window."""
    blocks = mask[: (HEIGHT // KERNEL) * KERNEL, : (WIDTH // KERNEL) * KERNEL]
    blocks = blocks.reshape(HEIGHT // KERNEL, KERNEL, WIDTH // KERNEL, KERNEL).mean(axis=(1, 3))
    return blocks[rows, cols]


@pytest.mark.parametrize("color", ["blue", "green", "red", "black"])
def test_ink_windows_are_skipped_and_clean_tissue_kept(tmp_path: Path, color: str) -> None:
    rgb, truth_tissue, truth_ink = synth.render_slide(
        WIDTH, HEIGHT, seed=21, pen_mark=True, pen_color=color
    )
    assert truth_ink[truth_tissue].any() and truth_ink[~truth_tissue].any()  # over both
    slide = synth.write_pyramidal_tiff(tmp_path / f"{color}.tif", rgb, mpp=0.5)
    level_args = ("--level", "0", "--thumbnail", tmp_path / "t.png", "--mask", tmp_path / "m.png")
    assert wsiproc("level", slide, "--out", tmp_path / "level.json", *level_args).returncode == 0
    out = tmp_path / "windows.csv"
    proc = wsiproc(
        "infer", slide, "--out", out, "--kernel-size", KERNEL, "--stride", KERNEL,
        "--level", "0", "--mask", tmp_path / "m.png", "--model", "builtin:mean-rgb", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as fh:
        kept = {(int(r["row"]), int(r["col"])) for r in csv.DictReader(fh)}
    rows, cols = np.mgrid[0 : HEIGHT // KERNEL, 0 : WIDTH // KERNEL]
    rows, cols = rows.ravel(), cols.ravel()
    tissue = window_means(truth_tissue, rows, cols)
    ink = window_means(truth_ink, rows, cols)
    is_kept = np.array([(r, c) in kept for r, c in zip(rows, cols, strict=True)])
    clean = (tissue >= 0.5) & (ink == 0)
    inky = ink > 0.5
    assert clean.sum() > 100 and inky.sum() > 20
    assert is_kept[clean].mean() >= 0.95, f"clean tissue windows kept: {is_kept[clean].mean()}"
    assert is_kept[inky].mean() <= 0.05, f"ink windows kept: {is_kept[inky].mean()}"
    # The mask infer used is the one the level stage wrote, ink labelled as such.
    tissue_px, ink_px = read_mask(tmp_path / "m.png")
    assert ink_px.mean() > 0.03 and not (tissue_px & ink_px).any()


def test_clean_slide_has_no_ink(tmp_path: Path) -> None:
    """No H&E pixel is called ink, at any nucleus size (4 µm nuclei at 20x and 40x)."""
    for seed, radius in ((31, 4.0), (32, 8.0)):
        rgb, truth_tissue, _ = synth.render_slide(
            WIDTH, HEIGHT, seed=seed, nucleus_radius_px=radius
        )
        slide = synth.write_pyramidal_tiff(tmp_path / f"clean{seed}.tif", rgb, mpp=0.5)
        args = ("--level", "0", "--mask", tmp_path / "m.png")
        assert wsiproc("level", slide, "--out", tmp_path / "level.json", *args).returncode == 0
        tissue_px, ink_px = read_mask(tmp_path / "m.png")
        assert ink_px.sum() == 0
        assert abs(tissue_px.mean() - truth_tissue.mean()) < 0.03
