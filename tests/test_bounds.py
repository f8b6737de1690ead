"""Slides with ``openslide.bounds-*``: the grid and tissue detection cover the bounds only, the
CSV keeps OpenSlide level-0 coordinates, GeoJSON is in QuPath's frame (the bounds' corner).

Issue 8, item 3, on the generated Leica SCN (image at (345, 278) on a 1731×1307 canvas).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from _stage_runs import KERNEL, openslide_mean, run_stages
from conftest import LEICA_CANVAS, LEICA_OFFSET
from PIL import Image

from wsiproc.grid import Chunk, Grid
from wsiproc.level import LevelPlan, LevelSpec, select_level
from wsiproc.qc.inputs import scan_windows
from wsiproc.readers import L0Box
from wsiproc.record import read_record
from wsiproc.slide import Slide, SlideInfo
from wsiproc.tissue import tissue_mask

BOUNDS = L0Box(*LEICA_OFFSET, 1109, 777)


def leica_info(**kwargs) -> SlideInfo:
    """Metadata as OpenSlide reports the Leica fixture (levels 1 and 4)."""
    return SlideInfo(
        "leica.scn", "leica", *LEICA_CANVAS, 2, (LEICA_CANVAS, (433, 327)), (1.0, 4.0),
        0.5, 0.5, 20.0, "openslide", bounds=BOUNDS, **kwargs,
    )  # fmt: skip


def test_leica_bounds_are_read(leica_scn):
    with Slide(leica_scn) as slide:
        assert slide.info.bounds == slide.info.l0_bounds == BOUNDS
        assert slide.info.to_dict()["bounds"] == {"x": 345, "y": 278, "width": 1109, "height": 777}
        # Transparent canvas outside the bounds reads white.
        assert (slide.read_region_rgb(0, 0, 0, 345, 278) == 255).all()


def test_slide_without_bounds_covers_everything(tiff_slide):
    with Slide(tiff_slide) as slide:
        assert slide.info.bounds is None
        assert slide.info.l0_bounds == L0Box(0, 0, 1531, 1107)
        plan = select_level(slide.info, LevelSpec(mpp=1.0))
    assert (plan.proc_x0, plan.proc_y0, plan.proc_width) == (0, 0, 765)


@pytest.mark.parametrize(
    ("spec", "origin", "size"),
    [
        (LevelSpec(level=0), (345, 278), (1109, 777)),
        # scale 2: the processing pixels wholly inside [345, 1454) x [278, 1055).
        (LevelSpec(mpp=1.0), (173, 139), (554, 388)),
        # level 1 (downsample 4) as is: [86.25, 363.5) -> pixels 87..362.
        (LevelSpec(level=1), (87, 70), (276, 193)),
    ],
)
def test_plan_covers_the_bounds_only(spec, origin, size):
    plan = select_level(leica_info(), spec)
    assert (plan.proc_x0, plan.proc_y0) == origin
    assert (plan.proc_width, plan.proc_height) == size
    inside = plan.proc_x0 * plan.scale >= BOUNDS.x and plan.proc_y0 * plan.scale >= BOUNDS.y
    end_x = (plan.proc_x0 + plan.proc_width) * plan.scale
    end_y = (plan.proc_y0 + plan.proc_height) * plan.scale
    assert inside and end_x <= BOUNDS.x + BOUNDS.width and end_y <= BOUNDS.y + BOUNDS.height


def test_level_plan_from_an_older_level_json_has_origin_zero():
    old = {
        "level": 0, "level_downsample": 1.0, "scale": 1.0, "resize_factor": 1.0,
        "proc_width": 10, "proc_height": 8, "proc_mpp": 0.5, "mpp_source": "metadata",
    }  # fmt: skip
    plan = LevelPlan.from_dict(old)
    assert (plan.proc_x0, plan.proc_y0) == (0, 0)


def test_chunk_box_and_window_boxes_start_at_the_grid_origin():
    grid = Grid(100, 80, 10, 10, "valid", 2.0, proc_x0=173, proc_y0=139)
    assert Chunk(0, 1, 2, 1, 1).proc_box(grid) == (193, 149, 10, 10)
    assert grid.l0_boxes(np.array([1]), np.array([2])).tolist() == [[386, 298, 20, 20]]


@pytest.fixture(scope="module")
def leica_runs(leica_scn, tmp_path_factory) -> dict[str, dict]:
    """The Leica slide through every stage, at level 0 as stored and at 1 mpp (resized)."""
    runs = {}
    for name, args in (("level0", ("--level", "0")), ("mpp1", ("--mpp", "1.0"))):
        out = tmp_path_factory.mktemp(f"leica_{name}")
        runs[name] = {**run_stages(leica_scn, out, *args), "out": out}
    return runs


@pytest.mark.parametrize("run", ["level0", "mpp1"])
def test_windows_lie_inside_the_bounds_in_level0_coordinates(leica_runs, run):
    record, rows = leica_runs[run]["record"], leica_runs[run]["rows"]
    bounds = (BOUNDS.x, BOUNDS.y, BOUNDS.width, BOUNDS.height)
    keys = ("l0_bounds_x", "l0_bounds_y", "l0_bounds_width", "l0_bounds_height")
    assert tuple(record[k] for k in keys) == bounds
    assert (record["l0_width"], record["l0_height"]) == LEICA_CANVAS
    scale = record["scale"]
    assert record["grid_cols"] == (record["proc_width"] - KERNEL) // KERNEL + 1
    assert len(rows) == record["grid_rows"] * record["grid_cols"]
    for row in rows:
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        assert BOUNDS.x <= x and x + w <= BOUNDS.x + BOUNDS.width
        assert BOUNDS.y <= y and y + h <= BOUNDS.y + BOUNDS.height
        assert x == round((record["proc_x0"] + int(row["col"]) * KERNEL) * scale)
    first = next(r for r in rows if r["row"] == "0" and r["col"] == "0")
    assert (int(first["x"]), int(first["y"])) == (
        round(record["proc_x0"] * scale),
        round(record["proc_y0"] * scale),
    )


def test_resized_windows_match_openslide(leica_runs, leica_scn):
    """At 1 mpp the CSV's level-0 boxes, read by OpenSlide and shrunk, give the CSV means."""
    osr = openslide.OpenSlide(str(leica_scn))
    try:
        for row in leica_runs["mpp1"]["rows"][::7]:
            x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
            rgb = np.asarray(osr.read_region((x, y), 0, (w, h)).convert("RGB"))
            small = np.asarray(Image.fromarray(rgb).resize((KERNEL, KERNEL), Image.BILINEAR))
            expected = small.reshape(-1, 3).mean(axis=0)
            got = np.array([float(row[c]) for c in ("mean_r", "mean_g", "mean_b")])
            assert np.abs(got - expected).max() < 3.0, (row["row"], row["col"])
    finally:
        osr.close()


@pytest.mark.parametrize("run", ["level0", "mpp1"])
def test_tissue_is_detected_on_the_bounds(leica_runs, vendor_image, run):
    """The thumbnail and mask cover the bounds, and each window's tissue fraction is that of
    its own pixels (a mask misplaced by the bounds' corner would give another window's)."""
    level, rows = leica_runs[run]["level"], leica_runs[run]["rows"]
    out = leica_runs[run]["out"]
    thumb = np.asarray(Image.open(out / "t.png"))
    assert level["thumbnail_scale"] * thumb.shape[1] == pytest.approx(BOUNDS.width)
    assert level["thumbnail_scale_y"] * thumb.shape[0] == pytest.approx(BOUNDS.height)
    assert max(thumb.shape[:2]) == 1024  # the whole thumbnail budget goes to the scan
    truth = tissue_mask(vendor_image)  # full resolution, in the bounds frame
    diffs = []
    for row in rows:
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        own = truth[y - BOUNDS.y : y - BOUNDS.y + h, x - BOUNDS.x : x - BOUNDS.x + w].mean()
        diffs.append(abs(float(row["tissue"]) - own))
    assert np.mean(diffs) < 0.05 and np.max(diffs) < 0.35
    assert 0.1 < np.mean([float(r["tissue"]) for r in rows]) < 0.9


def test_geojson_lands_where_qupath_shows_the_tissue(leica_runs, leica_scn):
    """QuPath crops a slide to its bounds: its pixel (X, Y) is OpenSlide's (bx + X, by + Y).
    Every feature's polygon is its CSV box shifted by the bounds' corner, and reading the
    polygon's box in that frame gives the feature's measurements."""
    rows = {(r["row"], r["col"]): r for r in leica_runs["level0"]["rows"]}
    features = leica_runs["level0"]["geojson"]["features"]
    assert len(features) == len(rows)
    osr = openslide.OpenSlide(str(leica_scn))
    try:
        for feature in features:
            r, c = feature["properties"]["name"][1:].split("_c")
            row = rows[(r, c)]
            ring = feature["geometry"]["coordinates"][0]
            qx, qy = ring[0]
            assert (qx + BOUNDS.x, qy + BOUNDS.y) == (int(row["x"]), int(row["y"]))
            assert ring[2] == [qx + KERNEL, qy + KERNEL]
            if int(r) % 3 == 0:
                means = openslide_mean(osr, BOUNDS.x + qx, BOUNDS.y + qy, KERNEL)
                got = feature["properties"]["measurements"]["mean_r"]
                assert got == pytest.approx(means[0], abs=1e-3)
    finally:
        osr.close()


def test_qc_overlay_is_in_the_thumbnail_frame(leica_runs):
    """QC paints windows onto the thumbnail, which starts at the bounds' corner: the first
    window lands at raster (0, 0), not at the canvas offset."""
    out = leica_runs["level0"]["out"]
    level = json.loads((out / "level.json").read_text())
    meta = read_record(out / "windows.json")
    assert meta.l0_origin == LEICA_OFFSET
    thumb = np.asarray(Image.open(out / "t.png"))
    _, _, _, counts = scan_windows(
        out / "windows.csv", meta, raster_shape=thumb.shape[:2], l0_per_px=level["thumbnail_scale"]
    )
    covered_rows, covered_cols = np.nonzero(counts)
    assert covered_rows.min() == 0 and covered_cols.min() == 0
    grid_w = meta.grid_cols * KERNEL / level["thumbnail_scale"]
    assert covered_cols.max() == pytest.approx(grid_w, abs=2)


def test_csv_header_unchanged_by_bounds(leica_runs):
    """Bounds add nothing to the CSV contract: the same columns as any slide."""
    with open(Path(leica_runs["level0"]["out"]) / "windows.csv", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:10] == [
        "patient", "slide", "row", "col", "x", "y", "width", "height", "level", "tissue",
    ]  # fmt: skip
