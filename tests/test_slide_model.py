"""Tests of ``wsiproc slide-predict`` (issue 16): contract, outputs, heatmap, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from features_h5 import grid_coords, write_features_h5
from slide_runs import (
    CLASSES,
    ProjectionAttention,
    closed_form,
    make_bag,
    numeric_columns,
    predict,
    run_cli,
    save_model,
)

from wsiproc import table
from wsiproc.colormap import lookup_table
from wsiproc.heatmap import centring
from wsiproc.record import read_record

DOC = Path(__file__).resolve().parent.parent / "docs" / "slide-models.md"


@pytest.fixture
def projection(tmp_path: Path):
    """A closed-form model and its weights, dimension 16."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=16).astype(np.float32)
    classify = rng.normal(size=(16, 2)).astype(np.float32)
    path = save_model(
        tmp_path, ProjectionAttention(torch.from_numpy(w), torch.from_numpy(classify)), dim=16
    )
    return path, w, classify


@pytest.mark.parametrize("overlap", [0, 112, 56])
def test_closed_form_attention_in_heatmap_pixel_by_pixel(
    tmp_path: Path, capsys, projection, overlap: int
) -> None:
    """Every window's pixels of the float heatmap hold softmax(x @ w) of its patch."""
    model, w, classify = projection
    rows, cols, x, rng = make_bag(1)
    stride = 224 - overlap
    coords = grid_coords(rows, cols, stride_px=stride, scale=2.0, proc_x0=37, proc_y0=5)
    tissue = rng.uniform(0.5, 1.0, size=len(rows)).astype(np.float32)
    h5 = write_features_h5(
        tmp_path / "f.h5", x, coords, tissue=tissue, overlap=overlap,
        level0_width=int(coords[:, 0].max()) + 900, level0_height=int(coords[:, 1].max()) + 500,
    )  # fmt: skip
    code, out, err = predict(capsys, h5, model, tmp_path)
    assert code == 0, err
    assert "slide-predict: slide:" in out
    tif, rgb = tmp_path / "attention.tif", tmp_path / "attention_rgb.tif"
    code, _, err = run_cli(
        capsys, "heatmap", tmp_path / "attention.csv", "--out", tif, "--rgb-out", rgb,
        "--color-scale", "rank", "--geojson", tmp_path / "attention.geojson",
    )  # fmt: skip
    assert code == 0, err

    meta = read_record(tmp_path / "attention.json")
    assert (meta.kernel_size, meta.stride, meta.scale) == (224, stride, 2.0)
    assert meta.proc_x0 == 37 % stride and meta.proc_y0 == 5 % stride
    _, expected = closed_form(x, w, classify)
    raster = tifffile.imread(tif)
    factor, shift = centring(224, stride)
    # Grid cells relative to the rebuilt origin (37 // stride columns are before it).
    grid_r, grid_c = rows + 5 // stride, cols + 37 // stride
    seen = np.zeros(raster.shape[:2], dtype=bool)
    for i in range(len(rows)):
        r0, c0 = grid_r[i] * factor + shift, grid_c[i] * factor + shift
        block = raster[r0 : r0 + factor, c0 : c0 + factor]
        np.testing.assert_allclose(block, expected[i], rtol=2e-6, atol=0)
        seen[r0 : r0 + factor, c0 : c0 + factor] = True
    assert np.isnan(raster[~seen]).all()

    # Colours follow the per-slide rank: the most attended window has the top colour.
    lut = lookup_table("viridis")
    colours = tifffile.imread(rgb)
    top = int(np.argmax(expected))
    r0, c0 = grid_r[top] * factor + shift, grid_c[top] * factor + shift
    assert colours[r0, c0, :3].tolist() == lut[255].tolist()
    with tifffile.TiffFile(rgb) as tif_file:
        desc = json.loads(tif_file.pages[0].description)
    assert desc["color_scale"] == "rank" and (desc["vmin"], desc["vmax"]) == (0.0, 1.0)
    geo = json.loads((tmp_path / "attention.geojson").read_text())
    assert len(geo["features"]) == len(rows)


def test_slide_json_holds_closed_form_prediction(tmp_path: Path, capsys, projection) -> None:
    """Logits, softmax probabilities, class, N, model sha256 are in slide.json."""
    model, w, classify = projection
    rows, cols, x, _ = make_bag(2)
    coords = grid_coords(rows, cols, stride_px=224, scale=2.0)
    h5 = write_features_h5(tmp_path / "f.h5", x, coords)
    code, _, err = predict(capsys, h5, model, tmp_path, "--patient", "P1", "--slide-id", "S1")
    assert code == 0, err
    data = json.loads((tmp_path / "slide.json").read_text())
    logits, _ = closed_form(x, w, classify)
    np.testing.assert_allclose(data["logits"], logits, rtol=1e-5)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(data["probabilities"], probs, rtol=1e-5)
    assert data["predicted_class"] == CLASSES[int(np.argmax(probs))]
    assert data["classes"] == CLASSES and data["n_patches"] == len(rows)
    assert (data["slide_id"], data["patient"], data["model"]) == ("S1", "P1", "proj")
    assert data["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert data["qc_flags"] == [] and data["attention_off_tissue_share"] == [0.0]


def test_attention_csv_follows_windows_contract(tmp_path: Path, capsys, projection) -> None:
    """Header, sorted rows, recovered row/col, boxes, level and tissue are the contract's."""
    model, w, classify = projection
    rows, cols, x, rng = make_bag(3)
    order = rng.permutation(len(rows))  # the h5 need not be in grid order for the CSV to be
    rows, cols, x = rows[order], cols[order], x[order]
    coords = grid_coords(rows, cols, stride_px=224, scale=2.0)
    tissue = rng.uniform(0.5, 1, size=len(rows)).astype(np.float32)
    h5 = write_features_h5(tmp_path / "f.h5", x, coords, tissue=tissue, patch_level=1)
    assert predict(capsys, h5, model, tmp_path, "--patient", "P")[0] == 0
    with open(tmp_path / "attention.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == table.header(["attention"])
    keys = [(int(g["row"]), int(g["col"])) for g in got]
    assert keys == sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    _, expected = closed_form(x, w, classify)
    by_cell = {(r, c): i for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
    for g in got:
        i = by_cell[(int(g["row"]), int(g["col"]))]
        assert (int(g["x"]), int(g["y"])) == tuple(coords[i])
        assert (g["width"], g["height"], g["level"], g["patient"]) == ("448", "448", "1", "P")
        assert float(g["tissue"]) == pytest.approx(tissue[i], abs=5e-5)
        assert float(g["attention"]) == pytest.approx(expected[i], rel=1e-6)


def test_doc_example_abmil_runs_as_documented(tmp_path: Path, capsys, monkeypatch) -> None:
    """The ABMIL block of docs/slide-models.md, scripted and saved as written, runs."""
    text = DOC.read_text()
    block = re.search(r"<!-- example-abmil -->\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "abmil_example.py"  # a file: TorchScript reads the class's source
    script.write_text(block)
    runpy.run_path(str(script), run_name="doc_example")
    sidecar = re.search(r"# abmil\.pt\.json:\n((?:# .*\n)+)", block).group(1)
    side = json.loads("".join(line[2:] for line in sidecar.splitlines()))
    (tmp_path / "abmil.pt.json").write_text(json.dumps(side))
    rows, cols, _, rng = make_bag(4, dim=1)
    x = rng.normal(size=(len(rows), side["input_dim"])).astype(np.float32)
    coords = grid_coords(rows, cols, stride_px=224, scale=2.0)
    h5 = write_features_h5(tmp_path / "f.h5", x, coords, encoder=side["encoder"])
    code, _, err = predict(capsys, h5, tmp_path / "abmil.pt", tmp_path)
    assert code == 0, err
    data = json.loads((tmp_path / "slide.json").read_text())
    assert data["classes"] == side["classes"] and sum(data["probabilities"]) == pytest.approx(1)
    attention = numeric_columns(tmp_path / "attention.csv")[:, 8]
    assert attention.sum() == pytest.approx(1, rel=1e-5) and (attention > 0).all()
