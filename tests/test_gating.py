"""The gating contract (issue 17): which windows run, and what an undecodable thumbnail does.

``min_tissue 0`` is every window with no gating and no thumbnail; the ink rule is
``--max-ink`` and applies only with gating; ``--on-read-error skip`` covers the thumbnail and
the mask (tissue unknown, NaN, every window runs), ``fail`` keeps the one-line error. Runs go
through ``wsiproc.cli.main`` in-process on generated slides read by the real readers.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsiproc import synth
from wsiproc.cli import main
from wsiproc.maskfile import mask_unknown_reason
from wsiproc.stream.plan import RunIdentity, fingerprint

ROOT = Path(__file__).resolve().parents[1]
MEAN_RGB = ("mean_r", "mean_g", "mean_b")
THUMBNAIL_PROBLEM = "cannot make the thumbnail: corrupt or truncated tile"


def rows_of(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def cells(rows: list[dict[str, str]]) -> list[tuple[int, int]]:
    return [(int(r["row"]), int(r["col"])) for r in rows]


def record_of(csv_path: Path) -> dict:
    return json.loads(csv_path.with_suffix(".json").read_text())


def one_error_line(stderr: str, path: Path | str) -> str:
    """The only line of ``stderr``: ``error: <path>: ...``, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def boxes_slide(tmp_path_factory) -> Path:
    """The issue's slide: 300x250 generic TIFF, white, with a red box (ink) touching a blue
    box (tissue) at the top and a green box (ink) at the bottom; 50-px windows: 6x5 cells.

    Window columns along rows 0-1: 0 red only; 1 half red, half blue; 2-3 blue.
    """
    img = np.full((250, 300, 3), 255, np.uint8)
    img[0:100, 0:75] = (220, 30, 30)
    img[0:100, 75:200] = (30, 30, 220)
    img[150:250, 100:250] = (30, 200, 30)
    path = tmp_path_factory.mktemp("gating") / "boxes.tif"
    return synth.write_pyramidal_tiff(path, img, mpp=0.5)


def infer_boxes(slide: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    args = ["infer", str(slide), "--out", str(out), "--kernel-size", "50", "--stride", "50"]
    assert main([*args, "--level", "0", "--workers", "1", "--quiet", *extra]) == 0
    return rows_of(out)


def test_min_tissue_zero_runs_every_window_without_any_gating(boxes_slide, tmp_path):
    """All 30 cells come out, the inked ones and the white ones too; the thumbnail still fills
    the tissue column (ink is never tissue), but nothing is gated on it."""
    out = tmp_path / "all" / "windows.csv"
    rows = infer_boxes(boxes_slide, out, "--min-tissue", "0")
    assert cells(rows) == [(r, c) for r in range(5) for c in range(6)]
    tissue = {cell: float(r["tissue"]) for cell, r in zip(cells(rows), rows, strict=True)}
    assert tissue[(0, 0)] == 0.0 and tissue[(1, 2)] == 1.0
    red = next(r for r in rows if cells([r]) == [(0, 0)])
    assert float(red["mean_r"]) > 200 > 50 > float(red["mean_g"])  # the ink window's pixels
    record = record_of(out)
    assert record["windows_processed"] == 30 and record["windows_skipped"] == 0
    assert record["tissue_unknown"] is False and record["tissue_source"] == "thumbnail"


def test_min_tissue_zero_with_a_mask_keeps_every_window_and_fills_tissue(boxes_slide, tmp_path):
    """A given mask still fills the tissue column; the ink rule still does not apply."""
    mask = tmp_path / "mask.png"
    assert main(["level", str(boxes_slide), "--out", str(tmp_path / "level.json"),
                 "--level", "0", "--mask", str(mask)]) == 0  # fmt: skip
    out = tmp_path / "windows.csv"
    rows = infer_boxes(boxes_slide, out, "--min-tissue", "0", "--mask", str(mask))
    assert len(rows) == 30
    tissue = {cell: float(r["tissue"]) for cell, r in zip(cells(rows), rows, strict=True)}
    assert tissue[(0, 0)] == 0.0 and tissue[(1, 2)] == 1.0 and 0.4 < tissue[(0, 1)] < 0.6
    assert record_of(out)["tissue_source"] == "mask" and not record_of(out)["tissue_unknown"]


def test_ink_rule_applies_with_gating_and_max_ink_one_disables_it(boxes_slide, tmp_path):
    """Half-inked tissue windows (column 1) are skipped at the default 0.1, kept at 1."""
    gated = tmp_path / "gated" / "windows.csv"
    assert cells(infer_boxes(boxes_slide, gated, "--min-tissue", "0.25")) == [
        (0, 2), (0, 3), (1, 2), (1, 3)
    ]  # fmt: skip
    assert record_of(gated)["max_ink"] == 0.1 and record_of(gated)["tissue_source"] == "thumbnail"
    free = tmp_path / "free" / "windows.csv"
    rows = infer_boxes(boxes_slide, free, "--min-tissue", "0.25", "--max-ink", "1")
    assert cells(rows) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert record_of(free)["max_ink"] == 1.0
    # pure-ink windows are not tissue, so no --max-ink brings them back; only min_tissue 0
    assert (0, 0) not in cells(rows)


def test_max_ink_is_part_of_the_run_fingerprint():
    """A checkpoint made with another ink rule is never resumed."""
    base = dict(
        slide={}, plan={}, kernel_px=8, stride_px=8, border="valid", min_tissue=0.25,
        tissue_source="thumbnail", model="m", model_identity="m", outputs=("p",),
        batch_size=4, precision="fp32", device="cpu", reader="pyvips", chunk_px=64,
        tile_px=None, on_read_error="fail", mask=None, patient="", slide_id="s",
    )  # fmt: skip
    a = fingerprint(RunIdentity(max_ink=0.1, **base))
    b = fingerprint(RunIdentity(max_ink=1.0, **base))
    c = fingerprint(RunIdentity(max_ink=0.1, **{**base, "tissue_source": "none"}))
    assert a["max_ink"] == 0.1 and a != b and a != c


def test_bad_max_ink_names_the_option(boxes_slide, tmp_path, capsys):
    out = tmp_path / "windows.csv"
    assert main(["infer", str(boxes_slide), "--out", str(out), "--kernel-size", "50",
                 "--stride", "50", "--max-ink", "1.5"]) == 1  # fmt: skip
    assert capsys.readouterr().err == "error: max-ink: must be between 0 and 1, got 1.5\n"
    assert not out.exists()


# ------------------------------------------------------------ undecodable thumbnail level


@pytest.fixture(scope="module")
def thumbless_svs(tmp_path_factory) -> Path:
    """4096x1024 Aperio SVS (levels 1 and 4) whose lowest-resolution level, the one the
    1024-px thumbnail is made from, has every tile zeroed; level 0 reads fine."""
    path = tmp_path_factory.mktemp("thumbless") / "thumbless.svs"
    synth.write_svs(
        path, synth.tissue_image(4096, 1024, seed=21), mpp=0.5, magnification=20, levels=2
    )
    for tile in range(4):  # level 1: 1024x256 px, four 256-px tiles
        synth.corrupt_tile(path, level=1, tile_index=tile)
    return path


@pytest.fixture
def thumbless_with_bad_tile(thumbless_svs, tmp_path) -> Path:
    """The same slide with also its first level-0 tile zeroed (one unreadable window)."""
    path = tmp_path / "thumbless_bad_tile.svs"
    shutil.copyfile(thumbless_svs, path)
    synth.corrupt_tile(path, level=0, tile_index=0)
    return path


def infer_svs(slide: Path, out: Path, *extra: str) -> int:
    args = ["infer", str(slide), "--out", str(out), "--kernel-size", "512", "--stride", "512"]
    return main([*args, "--workers", "1", "--quiet", *extra])


def test_skip_covers_the_thumbnail_level_through_level_infer_qc_and_heatmap(
    thumbless_with_bad_tile, tmp_path, capsys
):
    """The workflow's chain completes: every window runs, tissue NaN and recorded, the
    unreadable window NaN as before, and QC and heatmap accept the NaN tissue."""
    slide = thumbless_with_bad_tile
    level, thumb, mask = tmp_path / "level.json", tmp_path / "t.png", tmp_path / "m.png"
    assert main(["level", str(slide), "--out", str(level), "--level", "0",
                 "--thumbnail", str(thumb), "--mask", str(mask),
                 "--on-read-error", "skip"]) == 0  # fmt: skip
    level_record = json.loads(level.read_text())
    assert level_record["tissue_unknown"] is True and level_record["tissue_percent"] is None
    assert THUMBNAIL_PROBLEM in level_record["tissue_unknown_reason"]
    assert THUMBNAIL_PROBLEM in (mask_unknown_reason(mask) or "")
    out = tmp_path / "windows.csv"
    assert infer_svs(slide, out, "--plan", str(level), "--mask", str(mask),
                     "--min-tissue", "0.25", "--on-read-error", "skip") == 0  # fmt: skip
    rows = rows_of(out)
    assert cells(rows) == [(r, c) for r in range(2) for c in range(8)]
    assert all(math.isnan(float(r["tissue"])) for r in rows)
    nan_cells = [cells([r])[0] for r in rows if math.isnan(float(r["mean_r"]))]
    assert nan_cells == [(0, 0)]  # the zeroed level-0 tile, NaN as for any unreadable window
    record = record_of(out)
    assert record["tissue_unknown"] is True and THUMBNAIL_PROBLEM in record["tissue_unknown_reason"]
    assert record["windows_processed"] == 16 and record["read_errors"]["windows"] == 1
    assert "tissue unknown, every window is processed" in capsys.readouterr().err

    qc = tmp_path / "qc.json"
    assert main(["qc", str(slide), "--level-json", str(level), "--windows", str(out),
                 "--thumbnail", str(thumb), "--mask", str(mask), "--out", str(qc),
                 "--html", str(tmp_path / "qc.html")]) == 0  # fmt: skip
    qc_record = json.loads(qc.read_text())
    assert "read_errors" in qc_record["flags"] and "blurry" not in qc_record["flags"]
    assert any("tissue unknown" in w for w in qc_record["warnings"])
    heat = tmp_path / "heatmap.tif"
    assert main(["heatmap", str(out), "--out", str(heat),
                 "--rgb-out", str(tmp_path / "rgb.tif")]) == 0  # fmt: skip
    assert heat.stat().st_size > 0


def test_skip_without_a_mask_detects_nothing_and_runs_every_window(thumbless_svs, tmp_path):
    out = tmp_path / "windows.csv"
    assert infer_svs(thumbless_svs, out, "--level", "0", "--on-read-error", "skip") == 0
    assert len(rows_of(out)) == 16
    assert record_of(out)["tissue_unknown"] is True
    assert record_of(out)["read_errors"]["windows"] == 0


def test_min_tissue_zero_runs_a_slide_whose_thumbnail_cannot_be_decoded(thumbless_svs, tmp_path):
    """No thumbnail is needed without gating, so ``fail`` does not fail."""
    out = tmp_path / "windows.csv"
    assert infer_svs(thumbless_svs, out, "--level", "0", "--min-tissue", "0") == 0
    rows = rows_of(out)
    assert len(rows) == 16 and not any(math.isnan(float(r["mean_r"])) for r in rows)
    assert all(math.isnan(float(r["tissue"])) for r in rows)
    record = record_of(out)
    assert record["tissue_unknown"] is True and THUMBNAIL_PROBLEM in record["tissue_unknown_reason"]


def test_fail_on_an_undecodable_thumbnail_is_one_line_in_level_and_infer(
    thumbless_svs, tmp_path, capsys
):
    level, mask = tmp_path / "level.json", tmp_path / "m.png"
    args = ["level", str(thumbless_svs), "--out", str(level), "--level", "0", "--mask", str(mask)]
    assert main(args) == 1
    assert THUMBNAIL_PROBLEM in one_error_line(capsys.readouterr().err, thumbless_svs)
    assert not level.exists() and not mask.exists()
    out = tmp_path / "windows.csv"
    assert infer_svs(thumbless_svs, out, "--level", "0") == 1
    assert THUMBNAIL_PROBLEM in one_error_line(capsys.readouterr().err, thumbless_svs)
    assert not out.exists()
    # the level stage's unknown mask, given to a run that must gate under fail
    assert main([*args, "--on-read-error", "skip"]) == 0
    capsys.readouterr()
    assert infer_svs(thumbless_svs, out, "--level", "0", "--mask", str(mask)) == 1
    line = one_error_line(capsys.readouterr().err, mask)
    assert "holds no tissue information" in line and THUMBNAIL_PROBLEM in line


def test_tissue_detection_overlaps_the_model_load_and_its_error_comes_first(
    thumbless_svs, tmp_path, capsys
):
    """Tissue detection runs in a thread while the model loads: a slide whose thumbnail
    cannot be decoded still fails on that (not on a model that does not load either), the
    model's error shows once the tissue is known, and a good run records both steps' own
    seconds inside their overlapped wall time."""
    bad_model = tmp_path / "broken.pt"
    bad_model.write_bytes(b"not a TorchScript archive")
    out = tmp_path / "windows.csv"
    assert infer_svs(thumbless_svs, out, "--level", "0", "--model", str(bad_model)) == 1
    assert THUMBNAIL_PROBLEM in one_error_line(capsys.readouterr().err, thumbless_svs)
    code = infer_svs(
        thumbless_svs, out, "--level", "0", "--model", str(bad_model), "--on-read-error", "skip"
    )
    assert code == 1
    one_error_line(capsys.readouterr().err, bad_model)
    assert not out.exists()
    assert infer_svs(thumbless_svs, out, "--level", "0", "--min-tissue", "0") == 0
    t = record_of(out)["timings_s"]
    assert {"setup_tissue", "setup_model", "setup_tissue_model"} <= t.keys()
    # each is timed from the same start; the pair's wall time covers the longer one
    assert t["setup_tissue_model"] + 0.002 >= max(t["setup_tissue"], t["setup_model"])


# ------------------------------------------------------------------ defaults and schema


def test_window_gating_defaults_of_the_cli_equal_the_schema():
    """``--min-tissue``, ``--max-ink`` and ``--on-read-error`` default as the config does."""
    from wsiproc.cli import build_parser

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    window = schema["properties"]["window"]["properties"]
    parser = build_parser()
    infer = parser.parse_args(["infer", "s", "--out", "o", "--kernel-size", "1", "--stride", "1"])
    level = parser.parse_args(["level", "s", "--out", "o"])
    assert infer.min_tissue == window["min_tissue"]["default"]
    assert infer.max_ink == window["max_ink"]["default"]
    assert infer.on_read_error == level.on_read_error == window["on_read_error"]["default"]
