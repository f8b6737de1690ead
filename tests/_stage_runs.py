"""Helpers of the format and bounds tests: every stage of one slide in-process, and the
independent OpenSlide read the CSV is checked against."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import tifffile

from wsiproc.cli import main

KERNEL = 64
"""Window side (and stride) of the format runs, processing px."""


def run_stages(slide: Path, out: Path, *level_args: str) -> dict:
    """info → level → infer → heatmap (+ GeoJSON) in-process; every exit code 0."""
    level_json = out / "level.json"
    assert main(["info", str(slide)]) == 0
    argv = ["level", str(slide), "--out", str(level_json), *level_args]
    assert main([*argv, "--thumbnail", str(out / "t.png"), "--mask", str(out / "m.png")]) == 0
    csv_path = out / "windows.csv"
    infer_argv = [
        "infer", str(slide), "--out", str(csv_path), "--kernel-size", str(KERNEL),
        "--stride", str(KERNEL), "--model", "builtin:mean-rgb", "--min-tissue", "0",
        "--workers", "1", "--device", "cpu", "--quiet", *level_args,
    ]  # fmt: skip
    assert main(infer_argv) == 0
    heatmap_argv = [
        "heatmap", str(csv_path), "--out", str(out / "h.tif"),
        "--rgb-out", str(out / "h_rgb.tif"), "--geojson", str(out / "w.geojson"),
    ]  # fmt: skip
    assert main(heatmap_argv) == 0
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "level": json.loads(level_json.read_text()),
        "record": json.loads((out / "windows.json").read_text()),
        "rows": rows,
        "heatmap": tifffile.imread(out / "h.tif"),
        "geojson": json.loads((out / "w.geojson").read_text()),
    }


def openslide_mean(osr: openslide.OpenSlide, x: int, y: int, size: int) -> np.ndarray:
    """Mean RGB of a level-0 box read by OpenSlide itself, composited onto white."""
    rgba = np.asarray(osr.read_region((x, y), 0, (size, size))).astype(np.float64)
    alpha = rgba[..., 3:4] / 255.0
    rgb = np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha))
    return rgb.reshape(-1, 3).mean(axis=0)
