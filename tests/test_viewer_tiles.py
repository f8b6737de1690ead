"""Deep Zoom geometry and tiles of the viewer, against independent oracles: openslide-python's
own ``DeepZoomGenerator`` for the slide, ``heatmap_rgb.tif`` (the heatmap stage) for the
overlay, and pandas for the windows CSV."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from openslide.deepzoom import DeepZoomGenerator

from wsiproc.colormap import lookup_table
from wsiproc.record import read_record
from wsiproc.viewer.cache import TileCache
from wsiproc.viewer.deepzoom import DeepZoom
from wsiproc.viewer.overlay import HeatmapRaster
from wsiproc.viewer.tiles import SlidePool, SlideTiler
from wsiproc.viewer.windows import WindowTable


@given(st.integers(1, 200_000), st.integers(1, 200_000))
def test_deep_zoom_levels_and_tiles_match_openslide(width: int, height: int) -> None:
    ours = DeepZoom(width, height)

    class Fake:  # DeepZoomGenerator needs only these of an OpenSlide
        dimensions = (width, height)
        level_dimensions = ((width, height),)
        level_downsamples = (1.0,)
        properties: dict[str, str] = {}

        def get_best_level_for_downsample(self, downsample: float) -> int:
            return 0

    theirs = DeepZoomGenerator(Fake())  # type: ignore[arg-type]
    assert ours.level_dimensions == theirs.level_dimensions
    assert tuple(ours.tile_counts(z) for z in range(ours.level_count)) == theirs.level_tiles
    last = ours.level_count - 1
    cols, rows = ours.tile_counts(last)
    for t_col, t_row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
        box = ours.tile_box(last, t_col, t_row)
        (location, _, _), size = theirs._get_tile_info(last, (t_col, t_row))
        assert (box.z_x, box.z_y, box.z_width, box.z_height) == (*location, *size)


@pytest.fixture(
    scope="module", params=[("tiff_slide", "tiff_image"), ("svs_slide_20x", "svs_image_20x")]
)
def tilers(request):
    """Our tiler, openslide's generator over the same file, and the file's level-0 pixels."""
    slide_name, image_name = request.param
    path = request.getfixturevalue(slide_name)
    pool = SlidePool(path, max_handles=4)
    osr = openslide.OpenSlide(path)
    yield SlideTiler(pool), DeepZoomGenerator(osr, tile_size=254, overlap=1), osr
    pool.close()
    osr.close()


def test_full_resolution_tiles_equal_openslide_pixel_for_pixel(tilers) -> None:
    ours, theirs, _ = tilers
    last = ours.deepzoom.level_count - 1
    cols, rows = ours.deepzoom.tile_counts(last)
    for t_col in range(cols):
        for t_row in range(rows):
            want = np.asarray(theirs.get_tile(last, (t_col, t_row)))
            np.testing.assert_array_equal(ours.tile_rgb(last, t_col, t_row), want)


def box_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of factor×factor blocks (the edge repeated to fill the last block)."""
    h, w = image.shape[:2]
    ph, pw = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge").astype(np.float64)
    return padded.reshape(ph // factor, factor, pw // factor, factor, 3).mean(axis=(1, 3))


def test_coarser_tiles_are_the_slide_shrunk(tilers) -> None:
    """Every Deep Zoom level is level 0 of the slide shrunk by its downsample (box mean),
    including the top levels built from their four children.

    Within 30 % of the tissue's own spread: stored pyramid levels are resampled and JPEG'd
    apart from level 0, and their downsample is the ratio of sizes (4.007, not 4), which
    OpenSlide's coordinates follow too; a wrong region or level differs by about 1.4 spreads.
    Full resolution is compared exactly above."""
    ours, _, osr = tilers
    level0 = np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))
    recursive = 0
    for level in range(ours.deepzoom.level_count - 1):
        downsample = ours.deepzoom.downsample(level)
        if downsample > 64:
            continue  # a few pixels wide: any two resamplings of texture differ
        recursive += downsample > 2 * ours.pool.info.level_downsamples[-1]
        shrunk = box_mean(level0, downsample)
        assert shrunk.shape[1::-1] == ours.deepzoom.level_dimensions[level]
        cols, rows = ours.deepzoom.tile_counts(level)
        for t_col, t_row in {(0, 0), (cols - 1, rows - 1)}:
            box = ours.deepzoom.tile_box(level, t_col, t_row)
            want = shrunk[box.z_y : box.z_y + box.z_height, box.z_x : box.z_x + box.z_width]
            got = ours.tile_rgb(level, t_col, t_row).astype(np.float64)
            assert got.shape == want.shape, level
            assert np.abs(got - want).mean() <= 0.3 * want.std() + 2.0, level
    assert recursive >= 1  # at least one tested level is built from its children
    assert ours.tile_rgb(ours.deepzoom.level_count, 0, 0) is None
    assert ours.tile_rgb(0, 1, 0) is None


def test_tiles_in_parallel_threads_equal_serial_ones(tilers) -> None:
    ours, _, _ = tilers
    level = ours.deepzoom.level_count - 1
    cols, rows = ours.deepzoom.tile_counts(level)
    addresses = [(c, r) for c in range(cols) for r in range(rows)]
    serial = [ours.tile_rgb(level, c, r) for c, r in addresses]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda a: ours.tile_rgb(level, *a), addresses * 3))
    for i, tile in enumerate(parallel):
        np.testing.assert_array_equal(tile, serial[i % len(addresses)])
    assert 1 < ours.pool._opened <= ours.pool.max_handles


def test_heatmap_tiles_colour_each_cell_as_heatmap_rgb_does(viewer_run) -> None:
    folder = viewer_run.results / "P1" / "SECOND"
    record = read_record(folder / "windows.json")
    raster = HeatmapRaster(folder / "heatmap.tif", record, rgb_path=folder / "heatmap_rgb.tif")
    rgb = tifffile.imread(folder / "heatmap_rgb.tif")
    deepzoom = DeepZoom(record.l0_width, record.l0_height)
    band = raster.outputs.index(raster.default_output)
    vmin, vmax = raster.value_range(band)
    last = deepzoom.level_count - 1
    cell = record.stride * record.scale
    for t_col, t_row in ((0, 0), (1, 1), (4, 3)):
        box = deepzoom.tile_box(last, t_col, t_row)
        tile = raster.tile_rgba(
            deepzoom, last, t_col, t_row, band=band, lut=lookup_table("viridis"), vmin=vmin,
            vmax=vmax,
        )  # fmt: skip
        assert tile.shape == (box.z_height, box.z_width, 4)
        ys = ((box.z_y + np.arange(box.z_height)) // cell).astype(int)
        xs = ((box.z_x + np.arange(box.z_width)) // cell).astype(int)
        inside = (ys[:, None] < rgb.shape[0]) & (xs[None, :] < rgb.shape[1])
        want = rgb[np.minimum(ys, rgb.shape[0] - 1)][:, np.minimum(xs, rgb.shape[1] - 1)]
        np.testing.assert_array_equal(tile[inside], want[inside])
        assert (tile[~inside][:, 3] == 0).all()


def test_window_table_finds_every_row_as_pandas_reads_it(viewer_run) -> None:
    folder = viewer_run.results / "P1" / "SECOND"
    record = read_record(folder / "windows.json")
    table = WindowTable(folder / "windows.csv", record)
    frame = pd.read_csv(folder / "windows.csv", dtype=str)
    lines = (folder / "windows.csv").read_text().splitlines()[1:]
    present = {
        (int(r), int(c)): i for i, (r, c) in enumerate(zip(frame.row, frame.col, strict=True))
    }
    for row in range(record.grid_rows):
        for col in range(record.grid_cols):
            found = table.find(row, col)
            if (row, col) in present:
                assert ",".join(found) == lines[present[(row, col)]]
            else:
                assert found is None
    x, y, w, h = 150.0, 230.0, 400.0, 260.0
    boxes = frame[["x", "y", "width", "height"]].astype(int)
    overlap = (
        (boxes.x < x + w) & (boxes.x + boxes.width > x) & (boxes.y < y + h)
        & (boxes.y + boxes.height > y)
    )  # fmt: skip
    got = table.windows_in(x, y, w, h, limit=10_000)
    want = frame[overlap][["row", "col", "x", "y", "width", "height"]].astype(int)
    assert got == want.to_numpy().tolist()
    assert table.windows_in(0, 0, 1200, 900, limit=10) is None


@settings(max_examples=60, deadline=None)
@given(x=st.floats(-100, 1300), y=st.floats(-100, 1000))
def test_window_at_is_the_window_whose_cell_holds_the_point(viewer_run, x, y) -> None:
    folder = viewer_run.results / "P1" / "SECOND"
    record = read_record(folder / "windows.json")
    found = WindowTable(folder / "windows.csv", record).window_at(x, y)
    cell = record.stride * record.scale
    row, col = int(np.floor(y / cell)), int(np.floor(x / cell))
    if not (0 <= row < record.grid_rows and 0 <= col < record.grid_cols):
        assert found is None
        return
    assert found is not None and found[:2] == (row, col)
    if found[2] is not None:
        bx, by, bw, bh = (int(v) for v in found[2][4:8])
        assert bx <= x < bx + bw and by <= y < by + bh


@given(st.lists(st.tuples(st.integers(0, 30), st.binary(max_size=40)), max_size=200))
def test_tile_cache_never_holds_more_than_its_bound(puts) -> None:
    cache = TileCache(max_bytes=100)
    latest: dict[int, bytes] = {}
    for key, data in puts:
        cache.put(key, data)
        latest[key] = data
        assert cache.size_bytes <= 100
        assert cache.size_bytes == sum(len(cache._items[k]) for k in cache._items)
    if puts:
        key, data = puts[-1]
        assert cache.get(key) == data  # the newest is always kept (each put fits alone)
    for key in list(cache._items):
        assert cache.get(key) == latest[key]


def test_tile_cache_is_safe_across_threads() -> None:
    cache = TileCache(max_bytes=5_000)

    def work(seed: int) -> None:
        for i in range(2_000):
            key = (seed * 7 + i) % 97
            cache.put(key, bytes(key % 50))
            got = cache.get((key + 1) % 97)
            assert got is None or got == bytes(((key + 1) % 97) % 50)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.size_bytes <= 5_000
    assert cache.size_bytes == sum(len(v) for v in cache._items.values())


def test_viewer_objects_say_what_they_hold(viewer_run) -> None:
    from wsiproc.viewer import Viewer
    from wsiproc.viewer.memory import MemoryTrimmer
    from wsiproc.viewer.resources import ResourceRegistry

    viewer = Viewer(viewer_run.results, cache_mb=1, max_open=2, max_handles=2)
    try:
        entry = viewer.catalog.get("SECOND")
        res = viewer.registry.get(entry)
        assert repr(viewer.catalog) == f"Catalog({str(viewer.results)!r}, 4 slides)"
        assert repr(res.tiler) == f"SlideTiler({str(res.tiler.pool.path)!r}, levels=12)"
        assert repr(res.tiler.pool).startswith(f"SlidePool({str(res.tiler.pool.path)!r}, open=")
        assert repr(res.raster).endswith("('mean_r', 'mean_g', 'mean_b'))")
        assert repr(res.table).endswith("windows.csv', grid=14x18)")
        assert repr(viewer).startswith(f"Viewer({str(viewer.results)!r}, TileCache(0 tiles, 0/")
        assert repr(viewer.registry) == "ResourceRegistry(['SECOND'], max_open=2)"
        assert repr(ResourceRegistry(max_open=3, max_handles=1)) == (
            "ResourceRegistry([], max_open=3)"
        )
        assert repr(MemoryTrimmer(5)) == "MemoryTrimmer(every=5, trims=0)"
    finally:
        viewer.close()


def test_click_with_overlapping_windows_picks_the_window_centred_there(tmp_path):
    """kernel 64, stride 32: the heatmap colours each window's centre cell (shifted 16 px),
    so a click there must name that window, not its upper-left neighbour."""
    from wsiproc import table
    from wsiproc.heatmap import centring
    from wsiproc.record import WindowsRecord

    kernel, stride, scale = 64, 32, 2.0
    rows, cols = np.mgrid[0:4, 0:5]
    rows, cols = rows.ravel(), cols.ravel()
    boxes = np.stack(
        [cols * stride * scale, rows * stride * scale, np.full(20, kernel * scale),
         np.full(20, kernel * scale)], axis=1,
    ).astype(np.int64)  # fmt: skip
    values = (rows * 10 + cols).astype(np.float32)[:, None]
    body = table.format_rows("P", "S", rows, cols, boxes, 0, np.ones(20, np.float32), values)
    csv_path = tmp_path / "windows.csv"
    csv_path.write_text(",".join(table.header(["v"])) + "\n" + body)
    record = WindowsRecord(4, 5, kernel, stride, 0.5, scale, ("v",), ("v",), (1,))
    found = WindowTable(csv_path, record, window_pixels=centring(kernel, stride))
    for r, c in ((0, 0), (2, 3), (3, 4)):
        centre_x = (c * stride + kernel / 2) * scale
        centre_y = (r * stride + kernel / 2) * scale
        row, col, fields = found.window_at(centre_x, centre_y)
        assert (row, col) == (r, c) and fields is not None and float(fields[-1]) == r * 10 + c


def test_click_on_a_slide_with_bounds_counts_windows_from_the_bounds_corner(tmp_path):
    """Windows of a slide with bounds start at the grid origin (proc_x0, proc_y0), not 0."""
    from wsiproc import table
    from wsiproc.record import WindowsRecord

    rows, cols = np.mgrid[0:3, 0:4]
    rows, cols = rows.ravel(), cols.ravel()
    x0, y0, k = 100, 50, 32
    boxes = np.stack([x0 + cols * k, y0 + rows * k, np.full(12, k), np.full(12, k)], axis=1)
    values = (rows * 10 + cols).astype(np.float32)[:, None]
    body = table.format_rows("P", "S", rows, cols, boxes, 0, np.ones(12, np.float32), values)
    csv_path = tmp_path / "windows.csv"
    csv_path.write_text(",".join(table.header(["v"])) + "\n" + body)
    record = WindowsRecord(3, 4, k, k, 0.5, 1.0, ("v",), ("v",), (1,), proc_x0=x0, proc_y0=y0)
    found = WindowTable(csv_path, record)
    row, col, fields = found.window_at(x0 + 2 * k + 5, y0 + 1 * k + 5)
    assert (row, col) == (1, 2) and float(fields[-1]) == 12
    assert found.window_at(x0 - 5, y0 + 5) is None  # left of the bounds: off the grid
    assert [w[:2] for w in found.windows_in(x0 + 3 * k + 1, y0 + 1, 4, 4, limit=100)] == [[0, 3]]
