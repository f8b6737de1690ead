"""Tests of wsiproc.qc (metrics, qc.json/qc.html) and the ``qc`` and ``report`` commands."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import wsiproc.cli
from wsiproc.cli import main
from wsiproc.qc import metrics
from wsiproc.qc.collect import SlideQC, build_qc
from wsiproc.table import format_rows, header

THUMB_SCALE = 16.0  # level-0 px per thumbnail px
THUMB_HW = (80, 120)  # thumbnail (height, width) px
KERNEL = 224  # proc px; scale 1, so also level-0 px
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


@pytest.fixture(autouse=True)
def _present_stages(monkeypatch):
    """Register only the stages whose modules exist yet, so qc/report run in any tree state."""
    present = tuple(
        s for s in wsiproc.cli.STAGES if importlib.util.find_spec(f"wsiproc.cli.{s}") is not None
    )
    monkeypatch.setattr(wsiproc.cli, "STAGES", present)


def checkerboard(size_px: int = 64, square_px: int = 4) -> np.ndarray:
    """Black/white RGB checkerboard."""
    yy, xx = np.mgrid[:size_px, :size_px]
    board = ((yy // square_px + xx // square_px) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def test_blur_score_is_lower_for_blurred_copy():
    sharp = checkerboard()
    blurred = ndimage.gaussian_filter(sharp.astype(float), sigma=(2, 2, 0)).astype(np.uint8)
    mask = np.ones(sharp.shape[:2], bool)
    assert metrics.blur_score(blurred, mask) < metrics.blur_score(sharp, mask)


def test_blur_score_ignores_pixels_outside_mask():
    rgb = checkerboard()
    rgb[:, 32:] = 200  # flat right half
    mask = np.zeros(rgb.shape[:2], bool)
    mask[:, 40:] = True
    assert metrics.blur_score(rgb, mask) == 0.0
    assert math.isnan(metrics.blur_score(rgb, np.zeros_like(mask)))


def test_pen_fraction_detects_blue_stroke_but_not_stain():
    rgb = np.full((50, 50, 3), 245, np.uint8)
    rgb[10:30, 10:30] = (200, 120, 180)  # eosin pink
    rgb[30:40, 10:30] = (90, 60, 150)  # hematoxylin purple
    assert metrics.pen_fraction(rgb) == 0.0
    rgb[45:48, 5:45] = (40, 70, 180)  # blue marker stroke
    assert metrics.pen_fraction(rgb) == pytest.approx(3 * 40 / 2500)
    rgb[0:2, 0:10] = (40, 160, 60)  # green ink
    rgb[2:4, 0:10] = (20, 20, 25)  # black ink
    assert metrics.pen_fraction(rgb) == pytest.approx((120 + 40) / 2500)


def test_pen_fraction_counts_only_masked_pixels():
    rgb = np.full((4, 4, 3), 245, np.uint8)
    rgb[0] = (40, 70, 180)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    assert metrics.pen_fraction(rgb, mask) == 0.5
    assert math.isnan(metrics.pen_fraction(rgb, np.zeros((4, 4), bool)))


def test_empty_mask_flags_no_tissue():
    mask = np.zeros((10, 10), bool)
    rgb = np.full((10, 10, 3), 240, np.uint8)
    result = metrics.flags(
        tissue_percent=metrics.tissue_percent(mask),
        windows_processed=5,
        blur_score=metrics.blur_score(rgb, mask),
        pen_fraction=metrics.pen_fraction(rgb),
        mpp_source="metadata",
    )
    assert result == ["no_tissue"]


def test_flags_order_and_thresholds():
    result = metrics.flags(
        tissue_percent=50.0,
        windows_processed=0,
        blur_score=1.0,
        pen_fraction=0.5,
        mpp_source="fallback",
        read_error_windows=3,
    )
    assert result == ["no_windows", "blurry", "pen_marks", "read_errors", "missing_mpp"]
    ok = metrics.flags(
        tissue_percent=50.0,
        windows_processed=10,
        blur_score=1.0,
        pen_fraction=0.5,
        mpp_source="metadata",
        blur_threshold=0.5,
        pen_threshold=0.6,
    )
    assert ok == []


def test_output_summary_is_nan_safe():
    summary = metrics.output_summary({"a": np.array([1.0, np.nan, 3.0]), "b": np.array([np.nan])})
    assert summary["a"]["count"] == 2 and summary["a"]["nan"] == 1
    assert summary["a"]["median"] == 2.0 and summary["a"]["std"] == 1.0
    assert tuple(summary["b"]) == metrics.SUMMARY_KEYS
    assert summary["b"]["count"] == 0 and math.isnan(summary["b"]["mean"])


def test_histogram_ignores_non_finite():
    counts, edges = metrics.histogram(np.array([0.0, 1.0, np.inf, np.nan]), bins=4)
    assert counts.sum() == 2 and len(edges) == 5
    counts, edges = metrics.histogram(np.array([np.nan]), bins=3)
    assert counts.tolist() == [0, 0, 0] and edges[0] == 0.0 and edges[-1] == 1.0


def test_window_mean_raster_averages_overlaps():
    boxes = np.array([[0, 0, 4, 4], [2, 0, 4, 4], [0, 0, 4, 4]])
    sums, counts = metrics.window_mean_raster(
        boxes, np.array([1.0, 3.0, np.nan]), shape=(2, 3), l0_per_px=2.0
    )
    assert counts.tolist() == [[1, 2, 1], [1, 2, 1]]
    assert (sums / counts).tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]


# --- end to end ------------------------------------------------------------------------------


def make_slide_inputs(
    root: Path, name: str, *, pen: bool = False, mpp_source: str = "metadata", empty: bool = False
) -> dict[str, Path]:
    """Thumbnail, mask, level.json, windows.csv/.json and benchmark TSV of one synthetic slide."""
    rng = np.random.default_rng(len(name))
    height, width = THUMB_HW
    thumb = np.full((height, width, 3), 242, np.uint8)
    tissue = np.zeros((height, width), bool)
    if not empty:
        tissue[15:65, 20:100] = True
    texture = rng.integers(0, 90, size=(height, width, 1))
    stain = np.clip(np.array([210, 130, 190]) - texture, 0, 255).astype(np.uint8)
    thumb[tissue] = stain[tissue]
    if pen:
        thumb[70:74, 10:110] = (40, 70, 180)
    d = root / name
    d.mkdir(parents=True)
    Image.fromarray(thumb).save(d / "thumb.png")
    Image.fromarray((tissue * 255).astype(np.uint8)).save(d / "mask.png")
    l0_w, l0_h = int(width * THUMB_SCALE), int(height * THUMB_SCALE)
    level = {
        "path": f"{name}.svs",
        "vendor": "aperio",
        "width": l0_w,
        "height": l0_h,
        "objective_power": 20,
        "mpp_source": mpp_source,
        "level": 0,
        "level_downsample": 1.0,
        "scale": 1.0,
        "proc_mpp": 0.5 if mpp_source != "none" else None,
        "thumbnail": "thumb.png",  # relative to level.json's directory
        "mask": "mask.png",
        "thumbnail_scale": THUMB_SCALE,
        "tissue_percent": float(100 * tissue.mean()),
    }
    (d / "level.json").write_text(json.dumps(level))
    grid_rows, grid_cols = l0_h // KERNEL, l0_w // KERNEL
    rows, cols = np.mgrid[:grid_rows, :grid_cols]
    rows, cols = rows.ravel(), cols.ravel()
    size = np.full_like(rows, KERNEL)
    boxes = np.column_stack([cols * KERNEL, rows * KERNEL, size, size])
    cy = ((boxes[:, 1] + KERNEL / 2) / THUMB_SCALE).astype(int)
    cx = ((boxes[:, 0] + KERNEL / 2) / THUMB_SCALE).astype(int)
    keep = tissue[cy, cx]
    values = np.column_stack([rng.random(keep.sum()), rng.random(keep.sum()) * 10])
    outputs = ["prob_tumor", "score"]
    text = ",".join(header(outputs)) + "\n"
    text += format_rows(
        f"P-{name}", name, rows[keep], cols[keep], boxes[keep], 0, np.ones(keep.sum()), values
    )
    (d / "windows.csv").write_text(text)
    meta = {
        "format": "wsiproc-windows/1",
        "wsiproc_version": "0.1.0",
        "slide": f"{name}.svs",
        "slide_id": name,
        "patient": f"P-{name}",
        "level": 0,
        "level_downsample": 1.0,
        "scale": 1.0,
        "proc_mpp": 0.5,
        "resize_factor": 1.0,
        "kernel_size": KERNEL,
        "stride": KERNEL,
        "border": "drop",
        "min_tissue": 0.5,
        "grid_rows": grid_rows,
        "grid_cols": grid_cols,
        "proc_width": l0_w,
        "proc_height": l0_h,
        "l0_width": l0_w,
        "l0_height": l0_h,
        "windows_total": len(rows),
        "windows_processed": int(keep.sum()),
        "windows_skipped": int(len(rows) - keep.sum()),
        "model": "mean_rgb",
        "outputs": outputs,
        "output_names": outputs,
        "output_shape": [2],
        "elapsed_s": 3.0,
        "windows_per_s": keep.sum() / 3.0,
        "mpp_source": mpp_source,
    }
    (d / "windows.json").write_text(json.dumps(meta))
    (d / "infer.tsv").write_text(
        BENCH_HEADER + "\n" + "2.0000\t0:00:02\t512.5\t900.1\t400.0\t410.0\t1.2\t3.4\t95.0\t1.9\n"
    )
    return {"dir": d, "processed": int(keep.sum()), "total": len(rows)}


def run_qc(paths: dict, *extra: str, out: Path | None = None) -> tuple[int, Path]:
    """Run ``wsiproc qc`` on one synthetic slide; return (exit code, qc.json path)."""
    d = paths["dir"]
    out = out or d / "qc" / "qc.json"
    argv = [
        "qc",
        str(d / "slide.svs"),
        "--level-json",
        str(d / "level.json"),
        "--windows",
        str(d / "windows.csv"),
        "--benchmark",
        str(d / "infer.tsv"),
        "--out",
        str(out),
        "--html",
        str(out.with_suffix(".html")),
        *extra,
    ]
    return main(argv), out


@pytest.fixture
def cohort(tmp_path):
    """Three synthetic slides: clean, pen-marked with fallback mpp, and empty."""
    return {
        "clean": make_slide_inputs(tmp_path, "S1"),
        "pen": make_slide_inputs(tmp_path, "S2", pen=True, mpp_source="fallback"),
        "empty": make_slide_inputs(tmp_path, "S0", empty=True),
    }


def test_qc_writes_counts_flags_and_runtime(cohort):
    code, out = run_qc(cohort["clean"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["windows_processed"] == cohort["clean"]["processed"] > 0
    assert record["windows_total"] == cohort["clean"]["total"]
    assert record["csv_rows"] == record["windows_processed"]
    assert record["flags"] == [] and record["warnings"] == []
    assert record["patient"] == "P-S1" and record["slide_id"] == "S1"
    assert record["tissue_percent"] == pytest.approx(100 * 50 * 80 / (80 * 120))
    assert record["blur_score"] > metrics.BLUR_THRESHOLD
    assert record["pen_fraction"] == 0.0
    assert record["runtime_s"] == 2.0 and record["max_rss_mb"] == 512.5
    assert record["windows_per_s"] == pytest.approx(record["windows_processed"] / 2.0)
    assert set(record["outputs"]) == {"prob_tumor", "score"}
    assert record["outputs"]["prob_tumor"]["count"] == record["windows_processed"]
    assert record["html"] == str(out.with_suffix(".html"))
    assert record["thumbnail"].endswith("thumb.png") and record["mask"].endswith("mask.png")


def test_qc_flags_pen_fallback_mpp_and_empty_slide(cohort):
    code, out = run_qc(cohort["pen"])
    assert code == 0
    assert json.loads(out.read_text())["flags"] == ["pen_marks", "missing_mpp"]
    code, out = run_qc(cohort["empty"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["flags"] == ["no_windows", "no_tissue"]
    assert record["windows_processed"] == 0 and record["blur_score"] is None


def test_qc_thresholds_from_flags(cohort):
    code, out = run_qc(cohort["clean"], "--blur-threshold", "1e9", "--min-tissue-percent", "90")
    assert code == 0
    record = json.loads(out.read_text())
    assert record["flags"] == ["no_tissue", "blurry"]
    assert record["thresholds"]["blur_threshold"] == 1e9


def test_qc_html_is_self_contained(cohort):
    code, out = run_qc(cohort["clean"])
    assert code == 0
    page = out.with_suffix(".html").read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    assert len(images) >= 5  # thumbnail, mask, overlay, colour bar, histograms
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "P-S1 / S1" in page and 'class="banner ok"' in page


def test_qc_runtime_from_windows_json_without_benchmark(cohort):
    d = cohort["clean"]["dir"]
    code = main(
        [
            "qc",
            "slide.svs",
            "--level-json",
            str(d / "level.json"),
            "--windows",
            str(d / "windows.csv"),
            "--out",
            str(d / "q.json"),
            "--html",
            str(d / "q.html"),
        ]
    )
    assert code == 0
    record = json.loads((d / "q.json").read_text())
    assert record["runtime_s"] == 3.0 and record["runtime_source"] == "windows.json"


def report_argv(root: Path, slides: list[str]) -> list[str]:
    """``wsiproc report`` argv for a sheet of ``slides`` (patient ``P-<slide>``) under ``root``."""
    sheet = root / "samples.tsv"
    sheet.write_text("patient\tslide\tpath\n" + "".join(f"P-{s}\t{s}\t{s}.svs\n" for s in slides))
    results = root / "results"
    return [
        "report",
        *("--sheet", str(sheet), "--results", str(results), "--logs", str(root / "logs")),
        *("--out-html", str(results / "report.html"), "--out-tsv", str(results / "summary.tsv")),
    ]


def finished_slide_dir(root: Path, slide: str) -> Path:
    """``results/P-<slide>/<slide>/`` with the markers of the stages before qc, in chain order."""
    folder = root / "results" / f"P-{slide}" / slide
    folder.mkdir(parents=True)
    for marker in ("level.json", "windows.json", "heatmap_rgb.tif"):
        (folder / marker).write_text("{}")
    return folder


def test_report_links_every_slide_and_writes_sorted_tsv(cohort, tmp_path):
    root = tmp_path / "cohort"
    qc_jsons = []
    for paths in cohort.values():
        folder = finished_slide_dir(root, paths["dir"].name)
        code, out = run_qc(paths, out=folder / "qc.json")
        assert code == 0
        qc_jsons.append(str(out))
    argv = report_argv(root, [p["dir"].name for p in cohort.values()])
    assert main(argv) == 0
    report, tsv = root / "results" / "report.html", root / "results" / "summary.tsv"
    page = report.read_text()
    for qc_json in qc_jsons:
        rel = os.path.relpath(Path(qc_json).with_suffix(".html"), report.parent)
        assert f'href="{Path(rel).as_posix()}"' in page
        assert (report.parent / rel).exists()
    assert "3 slides: 1 ok, 2 flagged, 0 failed" in page
    with open(tsv, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["slide_id"] for r in rows] == ["S0", "S1", "S2"]
    assert [r["flags"] for r in rows] == ["no_windows,no_tissue", "OK", "pen_marks,missing_mpp"]
    assert rows[1]["windows_processed"] == str(cohort["clean"]["processed"])


def test_qc_missing_windows_csv_is_one_error_line(cohort, capsys):
    d = cohort["clean"]["dir"]
    (d / "windows.csv").unlink()
    code, out = run_qc(cohort["clean"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "windows.csv" in err[0]
    assert not out.exists()


def test_report_rejects_non_qc_json(tmp_path, capsys):
    bogus = finished_slide_dir(tmp_path, "S1") / "qc.json"
    bogus.write_text('{"flags": []}')
    assert main(report_argv(tmp_path, ["S1"])) == 1
    assert str(bogus) in capsys.readouterr().err


def test_qc_negative_threshold_is_config_error(cohort, capsys):
    code, _ = run_qc(cohort["clean"], "--pen-threshold", "-1")
    assert code == 1
    assert "--pen-threshold" in capsys.readouterr().err


def test_slide_qc_repr(cohort):
    d = cohort["clean"]["dir"]
    qc = build_qc("s.svs", level_json=d / "level.json", windows=d / "windows.csv")
    assert isinstance(qc, SlideQC)
    assert repr(qc) == "SlideQC(slide_id='S1', flags=[], thumbnail_shape=(80, 120))"


def test_qc_escapes_text_and_warns_without_mask(cohort, caplog):
    d = cohort["clean"]["dir"]
    meta = json.loads((d / "windows.json").read_text())
    meta["patient"] = "<b>P&1</b>"
    (d / "windows.json").write_text(json.dumps(meta))
    level = json.loads((d / "level.json").read_text())
    level["mask"] = None
    level["tissue_percent"] = 12.5
    (d / "level.json").write_text(json.dumps(level))
    code, out = run_qc(cohort["clean"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["tissue_percent"] == 12.5 and record["blur_score"] is None
    assert record["warnings"] == ["no tissue mask: tissue % taken from level.json"]
    assert "no tissue mask" in caplog.text
    page = out.with_suffix(".html").read_text()
    assert "<b>P&1</b>" not in page and "&lt;b&gt;P&amp;1&lt;/b&gt;" in page


def test_qc_shows_the_precision_windows_json_records(cohort):
    """Issue 17: the resolved precision reaches qc.json and the page; old records lack it."""
    code, out = run_qc(cohort["clean"])
    assert code == 0 and json.loads(out.read_text())["precision"] is None
    meta_path = cohort["clean"]["dir"] / "windows.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "precision": "bf16"}))
    code, out = run_qc(cohort["clean"])
    assert code == 0 and json.loads(out.read_text())["precision"] == "bf16"
    assert "<th>Precision</th><td>bf16</td>" in out.with_suffix(".html").read_text()
