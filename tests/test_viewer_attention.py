"""The slide model in the viewer: attention as a layer beside the patch model's outputs, the
prediction in the side panel, each patch's attention on a click (headless chromium, a real
``wsiproc view`` process).

The run is ``viewer_run``'s KNOWN slide (64-pixel cells) with a slide model whose attention is
known in closed form (softmax of a fixed projection of the features, ``slide_runs``): features
on KNOWN's window grid, then the real ``slide-predict``, ``heatmap`` and ``report`` commands.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from chromium import Chromium, browser_or_fail
from features_h5 import grid_coords, write_features_h5
from slide_runs import ProjectionAttention, closed_form, save_model
from viewer_run import CELL_PX, MPP, ViewerProcess

from wsiproc.cli import main

DIM = 8


@pytest.fixture(scope="module")
def attention_run(viewer_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the viewer run whose KNOWN slide also has a slide model's outputs."""
    root = tmp_path_factory.mktemp("attention_run")
    results = root / "results"
    shutil.copytree(viewer_run.results, results)
    out = results / "P1" / "KNOWN"
    with open(out / "windows.csv", newline="") as fh:
        cells = [(int(r["row"]), int(r["col"])) for r in csv.DictReader(fh)]
    rows, cols = np.array(cells).T
    rng = np.random.default_rng(5)
    x = rng.normal(size=(len(cells), DIM)).astype(np.float32)
    w = rng.normal(size=DIM).astype(np.float32)
    classify = rng.normal(size=(DIM, 2)).astype(np.float32)
    coords = grid_coords(rows, cols, stride_px=CELL_PX, scale=1.0)
    h5 = write_features_h5(
        out / "features.h5", x, coords, patch_size=CELL_PX, scale=1.0, mpp_level0=MPP,
        level0_width=1024, level0_height=768, name="KNOWN",
    )  # fmt: skip
    model = save_model(root, ProjectionAttention(torch.from_numpy(w), torch.from_numpy(classify)),
                       dim=DIM)  # fmt: skip
    argv = ["slide-predict", str(h5), "--model", str(model), "--out", str(out / "slide.json"),
            "--attention-out", str(out / "attention.csv"), "--patient", "P1",
            "--slide-id", "KNOWN", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    argv = ["heatmap", str(out / "attention.csv"), "--out", str(out / "attention.tif"),
            "--rgb-out", str(out / "attention_rgb.tif"), "--color-scale", "rank",
            "--thumbnail-out", str(out / "attention.png")]  # fmt: skip
    assert main(argv) == 0
    _, expected = closed_form(x, w, classify)
    (root / "expected.json").write_text(
        json.dumps({f"{r},{c}": float(a) for r, c, a in zip(rows, cols, expected, strict=True)})
    )
    return results


@pytest.fixture(scope="module")
def page(attention_run: Path) -> Iterator[Chromium]:
    """KNOWN's page in headless chromium, served by a real viewer over the run."""
    server = ViewerProcess(attention_run)
    chrome = browser_or_fail(width=1200, height=800)
    try:
        chrome.navigate(server.url + "slide/KNOWN")
        chrome.wait_for("window.wsiproc && wsiproc.isIdle()", timeout_s=90, settle_s=0.3)
        yield chrome
    finally:
        chrome.close()
        server.stop()


def test_attention_is_a_layer_beside_the_patch_outputs(page: Chromium) -> None:
    outputs = page.evaluate("wsiproc.settings.heatmap.outputs")
    assert outputs[:3] == ["mean_r", "mean_g", "mean_b"]
    assert outputs[-1] == "attention (slide model)"
    choices = page.evaluate("[...document.getElementById('output').options].map(o => o.value)")
    assert choices == outputs
    page.evaluate(
        "(() => { const s = document.getElementById('output');"
        " s.value = 'attention (slide model)'; s.dispatchEvent(new Event('change')); })()"
    )
    source = page.wait_for(
        "(() => wsiproc.isIdle() && wsiproc.state.heat"
        " ? wsiproc.state.heat.source.tilesUrl || wsiproc.state.heat.source.url || 'x'"
        " : null)()",
        timeout_s=90,
    )
    assert "/attention/attention/" in source


def test_side_panel_shows_the_prediction(page: Chromium, attention_run: Path) -> None:
    slide = json.loads((attention_run / "P1" / "KNOWN" / "slide.json").read_text())
    text = page.evaluate("document.getElementById('prediction').innerText")
    assert f"Predicted class\t{slide['predicted_class']}" in text
    for name, p in zip(slide["classes"], slide["probabilities"], strict=True):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"P({name})"))
        assert float(line.split("\t")[1]) == pytest.approx(p, rel=1e-3)


def test_click_shows_the_windows_attention(page: Chromium, attention_run: Path) -> None:
    expected = json.loads((attention_run.parent / "expected.json").read_text())
    with open(attention_run / "P1" / "KNOWN" / "attention.csv", newline="") as fh:
        table = {(r["row"], r["col"]): r for r in csv.DictReader(fh)}
    for row, col in ((3, 7), (9, 2), (6, 14)):
        r = table[(str(row), str(col))]
        x, y = int(r["x"]) + 30, int(r["y"]) + 30
        page.click(*page.evaluate(f"wsiproc.pageFromImage({x}, {y})"))
        shown = page.wait_for(
            "(() => { const t = document.getElementById('attention-table');"
            f" if (!t || !wsiproc.state.selected || wsiproc.state.selected[0] !== {row}"
            f" || wsiproc.state.selected[1] !== {col}) return null;"
            " return [...t.rows].map(r => [r.cells[0].textContent, r.cells[1].textContent]); })()"
        )
        assert shown == [["Attention: attention", r["attention"]]]
        assert float(r["attention"]) == pytest.approx(expected[f"{row},{col}"], rel=1e-4)
