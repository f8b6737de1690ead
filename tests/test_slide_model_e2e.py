"""Real ``wsiproc features`` -> ``slide-predict`` -> ``heatmap`` on generated slides (issue 16)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_runs import predict, run_cli

from wsiproc.record import read_record


@pytest.mark.parametrize("stride", [None, 112])
def test_features_to_attention_heatmap_on_the_infer_grid(
    svs_slide_20x: Path, tmp_path: Path, capsys, stride: int | None
) -> None:
    """Rows/cols rebuilt from the h5 are the infer grid's; the float heatmap holds the CSV's
    attention at each window's centre cell; the record agrees with the features run's."""
    grid_args = [] if stride is None else ["--stride", str(stride)]
    h5 = tmp_path / "features.h5"
    code, _, err = run_cli(
        capsys, "features", svs_slide_20x, "--encoder", "builtin:tiny", "--out", h5,
        "--workers", "1", "--quiet", *grid_args,
    )  # fmt: skip
    assert code == 0, err
    windows = tmp_path / "windows.csv"
    code, _, err = run_cli(
        capsys, "infer", svs_slide_20x, "--out", windows, "--model", "builtin:mean-rgb",
        "--kernel-size", "224", "--stride", str(stride or 224), "--min-tissue", "0.25",
        "--workers", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = predict(capsys, h5, "builtin:abmil-demo", tmp_path, "--patient", "P")
    assert code == 0, err

    with open(windows, newline="") as fh:
        want = [(r["row"], r["col"], r["x"], r["y"], r["tissue"]) for r in csv.DictReader(fh)]
    with open(tmp_path / "attention.csv", newline="") as fh:
        got_rows = list(csv.DictReader(fh))
    got = [(r["row"], r["col"], r["x"], r["y"], r["tissue"]) for r in got_rows]
    assert got == want and len(got) > 10
    meta, features_meta = (
        read_record(tmp_path / "attention.json"),
        read_record(h5.with_suffix(".json")),
    )
    assert (meta.grid_rows, meta.grid_cols) == (features_meta.grid_rows, features_meta.grid_cols)
    assert (meta.stride, meta.kernel_size, meta.proc_mpp) == (
        features_meta.stride, features_meta.kernel_size, features_meta.proc_mpp,
    )  # fmt: skip

    tif = tmp_path / "attention.tif"
    code, _, err = run_cli(
        capsys, "heatmap", tmp_path / "attention.csv", "--out", tif,
        "--rgb-out", tmp_path / "attention_rgb.tif", "--color-scale", "rank",
    )  # fmt: skip
    assert code == 0, err
    raster = tifffile.imread(tif)
    with tifffile.TiffFile(tif) as t:
        pixels = json.loads(t.pages[0].description)["window_pixels"]
    f, s = pixels["factor"], pixels["shift"]
    for r in got_rows:
        i, j = int(r["row"]) * f + s, int(r["col"]) * f + s
        block = raster[i : i + f, j : j + f]
        assert np.all(block == np.float32(float(r["attention"])))
    slide = json.loads((tmp_path / "slide.json").read_text())
    assert slide["n_patches"] == len(got_rows) and slide["slide_id"] == svs_slide_20x.stem
