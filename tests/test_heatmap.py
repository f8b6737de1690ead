"""Tests of ``wsiproc heatmap``: CSV → float TIFF and RGBA TIFF, read back independently."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import openslide
import pytest
import pyvips
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from wsiproc import cli, table
from wsiproc.colormap import COLORMAP_HELP, COMMON_COLORMAPS, colorize, lookup_table
from wsiproc.errors import ConfigError
from wsiproc.heatmap import WindowGrid, average_windows
from wsiproc.record import read_record


def write_windows(
    directory: Path,
    *,
    rng: np.random.Generator,
    grid_rows: int,
    grid_cols: int,
    names: tuple[str, ...] = ("tumor", "stroma"),
    block: tuple[int, int] | None = None,
    kernel: int = 224,
    stride: int = 224,
    proc_mpp: float | None = 0.5,
    scale: float = 2.0,
    keep: float = 0.8,
) -> tuple[Path, dict[tuple[int, int], np.ndarray]]:
    """Write windows.csv + windows.json; return the CSV path and {(row, col): float32 values}.

    The expected values are the CSV text parsed by Python, so they are the CSV values exactly.
    """
    outputs = list(names) if block is None else table.spatial_output_names(names, *block)
    cells = [(r, c) for r in range(grid_rows) for c in range(grid_cols) if rng.random() < keep]
    rows = np.array([r for r, _ in cells], dtype=np.int64)
    cols = np.array([c for _, c in cells], dtype=np.int64)
    n = len(cells)
    values = (rng.normal(size=(n, len(outputs))) * 10).astype(np.float32)
    if n:
        values[0, 0] = np.nan  # a model may emit NaN; it stays NaN
    l0_step = stride * scale
    boxes = np.stack(
        [
            np.rint(cols * l0_step),
            np.rint(rows * l0_step),
            np.full(n, round(kernel * scale)),
            np.full(n, round(kernel * scale)),
        ],
        axis=1,
    ).astype(np.int64)
    tissue = rng.random(n)
    body = table.format_rows("P1", "S1", rows, cols, boxes, 0, tissue, values)
    csv_path = directory / "windows.csv"
    csv_path.write_text(",".join(table.header(outputs)) + "\n" + body, encoding="utf-8")
    shape = [len(names)] if block is None else [len(names), *block]
    meta = {
        "format": "wsiproc-windows/1",
        "grid_rows": grid_rows,
        "grid_cols": grid_cols,
        "kernel_size": kernel,
        "stride": stride,
        "proc_mpp": proc_mpp,
        "scale": scale,
        "outputs": outputs,
        "output_names": list(names),
        "output_shape": shape,
    }
    (directory / "windows.json").write_text(json.dumps(meta), encoding="utf-8")
    expected = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh):
            cell = (int(record["row"]), int(record["col"]))
            expected[cell] = np.array([float(record[o]) for o in outputs], dtype=np.float32)
    return csv_path, expected


def expected_raster(
    expected: dict[tuple[int, int], np.ndarray],
    grid_rows: int,
    grid_cols: int,
    bands: int,
    block: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Brute-force window-mode raster: one h×w block per window, NaN elsewhere."""
    h, w = block
    raster = np.full((grid_rows * h, grid_cols * w, bands), np.nan, dtype=np.float32)
    for (r, c), vals in expected.items():
        maps = vals.reshape(bands, h, w)
        for i in range(h):
            for j in range(w):
                raster[r * h + i, c * w + j] = maps[:, i, j]
    return raster


def read_pyvips(path: Path) -> np.ndarray:
    """Level 0 of a TIFF through pyvips, as (height, width, bands)."""
    image = pyvips.Image.new_from_file(str(path), page=0)
    dtype = {"float": np.float32, "uchar": np.uint8}[image.format]
    return np.ndarray(
        buffer=image.write_to_memory(), dtype=dtype, shape=(image.height, image.width, image.bands)
    )


def pixel_um_from_tags(page: tifffile.TiffPage) -> tuple[float, float]:
    """(x, y) µm per pixel from XResolution/YResolution in px/cm."""
    assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
    xnum, xden = page.tags["XResolution"].value
    ynum, yden = page.tags["YResolution"].value
    return 1e4 * xden / xnum, 1e4 * yden / ynum


@pytest.fixture
def wsiproc(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run ``wsiproc heatmap ...`` in-process; return (exit code, stdout, stderr).

    Only the heatmap stage is registered, so these tests do not depend on other stages.
    """
    monkeypatch.setattr(cli, "STAGES", ("heatmap",))

    def run(*argv: object) -> tuple[int, str, str]:
        code = cli.main(["heatmap", *(str(a) for a in argv)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_mode_pixels_equal_csv_values(tmp_path: Path, wsiproc, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid_rows, grid_cols = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    names = ("a", "b", "c")[: int(rng.integers(1, 4))]
    csv_path, expected = write_windows(
        tmp_path, rng=rng, grid_rows=grid_rows, grid_cols=grid_cols, names=names, keep=0.7
    )
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    code, stdout, _ = wsiproc(csv_path, "--out", out, "--rgb-out", rgb)
    assert code == 0
    assert f"{len(expected)} windows" in stdout
    want = expected_raster(expected, grid_rows, grid_cols, len(names))
    got = tifffile.imread(out).reshape(grid_rows, grid_cols, len(names))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # NaN where missing, exact elsewhere
    np.testing.assert_array_equal(read_pyvips(out), want)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.tilelength == 256
        assert pixel_um_from_tags(page) == pytest.approx((112.0, 112.0), rel=1e-6)
        assert json.loads(page.description)["bands"] == list(names)


def test_large_raster_is_tiled_pyramid(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(5)
    csv_path, expected = write_windows(
        tmp_path, rng=rng, grid_rows=300, grid_cols=520, names=("p",), kernel=100, stride=100,
        proc_mpp=0.25,
    )  # fmt: skip
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    assert wsiproc(csv_path, "--out", out, "--rgb-out", rgb)[0] == 0
    for path in (out, rgb):
        with tifffile.TiffFile(path) as tif:
            assert len(tif.pages) > 1
            assert all(page.is_tiled for page in tif.pages)
            assert tif.pages[0].shape[:2] == (300, 520)
            assert tif.pages[1].shape[:2] == (150, 260)
            assert pixel_um_from_tags(tif.pages[0]) == pytest.approx((25.0, 25.0), rel=1e-6)
    want = expected_raster(expected, 300, 520, 1)[..., 0]
    np.testing.assert_array_equal(tifffile.imread(out, key=0), want)
    np.testing.assert_array_equal(tifffile.imread(out, key=1), want[::2, ::2])  # no NaN spread
    slide = openslide.OpenSlide(rgb)
    assert slide.level_count > 1
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(25.0)


def test_rgb_tiff_opens_in_openslide_transparent_where_nan(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(7)
    csv_path, expected = write_windows(
        tmp_path, rng=rng, grid_rows=13, grid_cols=29, names=("a", "b"), keep=0.6
    )
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    argv = ["--out", out, "--rgb-out", rgb, "--output", "b", "--colormap", "magma"]
    code, _, _ = wsiproc(csv_path, *argv, "--vmin", -5, "--vmax", 5)
    assert code == 0
    band = expected_raster(expected, 13, 29, 2)[..., 1]
    want = colorize(band, lookup_table("magma"), -5.0, 5.0)

    slide = openslide.OpenSlide(rgb)
    assert slide.dimensions == (29, 13)
    assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(112.0)
    region = np.asarray(slide.read_region((0, 0), 0, (29, 13)))
    assert region.shape == (13, 29, 4)
    np.testing.assert_array_equal(region, want)  # alpha is 0 or 255, so colours survive
    assert (region[np.isnan(band)][:, 3] == 0).all()
    assert (region[~np.isnan(band)][:, 3] == 255).all()
    description = json.loads(slide.properties["tiff.ImageDescription"])
    assert description["output"] == "b" and description["colormap"] == "magma"
    assert (description["vmin"], description["vmax"]) == (-5.0, 5.0)
    slide.close()

    with tifffile.TiffFile(rgb) as tif:
        page = tif.pages[0]
        assert page.shape == (13, 29, 4) and page.dtype == np.uint8 and page.is_tiled
        assert page.extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,)
    np.testing.assert_array_equal(read_pyvips(rgb), want)


def test_default_range_is_1st_to_99th_percentile(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(11)
    csv_path, expected = write_windows(tmp_path, rng=rng, grid_rows=20, grid_cols=20)
    rgb = tmp_path / "heatmap_rgb.tif"
    assert wsiproc(csv_path, "--out", tmp_path / "h.tif", "--rgb-out", rgb)[0] == 0
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # Only windows mostly of tissue count: ink, debris and glass edges never set the scale.
    first = np.array([float(r["tumor"]) for r in rows if float(r["tissue"]) >= 0.5])
    everything = np.array([float(r["tumor"]) for r in rows])
    assert len(first) < len(everything)
    low, high = np.percentile(first[np.isfinite(first)], [1, 99])
    with tifffile.TiffFile(rgb) as tif:
        description = json.loads(tif.pages[0].description)
    assert description["output"] == "tumor" and description["colormap"] == "viridis"
    assert description["vmin"] == pytest.approx(low) and description["vmax"] == pytest.approx(high)


def test_average_mode_equals_brute_force_mean(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(3)
    grid_rows, grid_cols, kernel, stride = 9, 14, 224, 80  # k = ceil(224 / 80) = 3
    csv_path, expected = write_windows(
        tmp_path,
        rng=rng,
        grid_rows=grid_rows,
        grid_cols=grid_cols,
        kernel=kernel,
        stride=stride,
        keep=0.5,
    )
    out = tmp_path / "heatmap.tif"
    argv = ["--out", out, "--rgb-out", tmp_path / "rgb.tif", "--mode", "average"]
    assert wsiproc(csv_path, *argv)[0] == 0
    k = 3
    want = np.full((grid_rows + k - 1, grid_cols + k - 1, 2), np.nan, dtype=np.float32)
    for i in range(want.shape[0]):
        for j in range(want.shape[1]):
            for band in range(2):
                covering = [
                    float(vals[band])
                    for (r, c), vals in expected.items()
                    if r <= i < r + k and c <= j < c + k and not math.isnan(vals[band])
                ]
                if covering:
                    want[i, j, band] = np.float32(np.mean(covering))
    got = tifffile.imread(out)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    with tifffile.TiffFile(out) as tif:
        assert pixel_um_from_tags(tif.pages[0]) == pytest.approx((40.0, 40.0), rel=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    span=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_average_windows_matches_definition(rows: int, cols: int, span: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, cols, 1)).astype(np.float32)
    values[rng.random((rows, cols, 1)) < 0.3] = np.nan
    got = average_windows(values, span)
    assert got.shape == (rows + span - 1, cols + span - 1, 1)
    for i in range(got.shape[0]):
        for j in range(got.shape[1]):
            block = values[max(0, i - span + 1) : i + 1, max(0, j - span + 1) : j + 1, 0]
            block = block[~np.isnan(block)]
            want = block.astype(np.float64).mean() if block.size else np.nan
            np.testing.assert_allclose(got[i, j, 0], want, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_spatial_outputs_placed_as_blocks(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(4)
    block = (2, 3)
    csv_path, expected = write_windows(
        tmp_path, rng=rng, grid_rows=5, grid_cols=7, names=("p", "q"), block=block, stride=120
    )
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    assert wsiproc(csv_path, "--out", out, "--rgb-out", rgb, "--output", "q")[0] == 0
    want = expected_raster(expected, 5, 7, 2, block)
    got = tifffile.imread(out)
    assert got.shape == (10, 21, 2)
    np.testing.assert_array_equal(got, want)
    with tifffile.TiffFile(out) as tif:  # stride · mpp = 60 µm split into 3 × 2
        assert pixel_um_from_tags(tif.pages[0]) == pytest.approx((20.0, 30.0), rel=1e-6)
    slide = openslide.OpenSlide(rgb)
    assert slide.dimensions == (21, 10)
    alpha = np.asarray(slide.read_region((0, 0), 0, (21, 10)))[..., 3]
    np.testing.assert_array_equal(alpha == 0, np.isnan(want[..., 1]))


def test_average_mode_refuses_spatial_outputs(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(4)
    csv_path, _ = write_windows(tmp_path, rng=rng, grid_rows=3, grid_cols=3, block=(2, 2))
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif", "--mode", "average"]
    code, _, err = wsiproc(csv_path, *argv)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: --mode:")
    assert not (tmp_path / "h.tif").exists()


def test_unknown_output_is_one_error_line_naming_it(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(0)
    csv_path, _ = write_windows(tmp_path, rng=rng, grid_rows=3, grid_cols=4)
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif", "--output", "nope"]
    code, _, err = wsiproc(csv_path, *argv)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: --output: unknown output 'nope'")
    assert "tumor, stroma" in err
    assert not (tmp_path / "h.tif").exists() and not (tmp_path / "r.tif").exists()


def test_null_mpp_writes_resolution_unit_none(
    tmp_path: Path, wsiproc, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(2)
    csv_path, _ = write_windows(tmp_path, rng=rng, grid_rows=4, grid_cols=5, proc_mpp=None)
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    assert wsiproc(csv_path, "--out", out, "--rgb-out", rgb)[0] == 0
    assert "proc_mpp is null" in caplog.text
    for path in (out, rgb):
        with tifffile.TiffFile(path) as tif:
            assert all(p.tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE for p in tif.pages)
    slide = openslide.OpenSlide(rgb)
    assert openslide.PROPERTY_NAME_MPP_X not in slide.properties


def test_meta_option_overrides_default_json(tmp_path: Path, wsiproc) -> None:
    rng = np.random.default_rng(9)
    csv_path, expected = write_windows(tmp_path, rng=rng, grid_rows=3, grid_cols=4)
    meta = (tmp_path / "windows.json").rename(tmp_path / "other.json")
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif"]
    code, _, err = wsiproc(csv_path, *argv)
    assert code == 1 and err.startswith(f"error: {tmp_path / 'windows.json'}:")
    assert wsiproc(csv_path, *argv, "--meta", meta)[0] == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "h.tif"), expected_raster(expected, 3, 4, 2)
    )


@pytest.mark.parametrize(
    ("csv_text", "problem"),
    [
        (None, "No such file"),
        ("", "not a wsiproc windows CSV"),
        ("row,col,tumor\n0,0,1\n", "not a wsiproc windows CSV"),
        ("HEADER\nP1,S1,0,zero,0,0,10,10,0,1.0,0.5,0.5\n", "malformed windows CSV"),
        ("HEADER\nP1,S1,0,9,0,0,10,10,0,1.0,0.5,0.5\n", "outside the 3x4 grid"),
        ("HEADER\nP1,S1,0,1,0,0,10,10,0,1.0,0.5,0.5\nP1,S1,0,1,0,0,10,10,0,1.0,1,1\n", "twice"),
    ],
)
def test_bad_csv_is_one_error_line_naming_it(
    tmp_path: Path, wsiproc, csv_text: str | None, problem: str
) -> None:
    write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=3, grid_cols=4)
    csv_path = tmp_path / "windows.csv"
    if csv_text is None:
        csv_path.unlink()
    else:
        header = ",".join(table.header(["tumor", "stroma"]))
        csv_path.write_text(csv_text.replace("HEADER", header), encoding="utf-8")
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif"]
    code, _, err = wsiproc(csv_path, *argv, "--geojson", tmp_path / "w.geojson")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: {csv_path}: ")
    assert problem in err
    assert list(tmp_path.glob("*.tif")) == [] and list(tmp_path.glob("*geojson*")) == []


@pytest.mark.parametrize(
    ("meta_text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"grid_rows": 3}', "'grid_cols'"),
        (None, "outputs and 2 output names"),
    ],
)
def test_bad_json_is_one_error_line_naming_it(
    tmp_path: Path, wsiproc, meta_text: str | None, problem: str
) -> None:
    csv_path, _ = write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=3, grid_cols=4)
    meta_path = tmp_path / "windows.json"
    if meta_text is None:
        meta = json.loads(meta_path.read_text())
        meta["output_shape"] = [3]
        meta_text = json.dumps(meta)
    meta_path.write_text(meta_text, encoding="utf-8")
    code, _, err = wsiproc(csv_path, "--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: {meta_path}: ")
    assert problem in err


def test_vmin_not_below_vmax_is_config_error(tmp_path: Path, wsiproc) -> None:
    csv_path, _ = write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=2, grid_cols=2)
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif"]
    code, _, err = wsiproc(csv_path, *argv, "--vmin", 2, "--vmax", 1)
    assert code == 1 and err.startswith("error: --vmin:")


def test_empty_csv_writes_all_nan_rasters(tmp_path: Path, wsiproc) -> None:
    csv_path, _ = write_windows(
        tmp_path, rng=np.random.default_rng(0), grid_rows=3, grid_cols=2, keep=0.0
    )
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    assert wsiproc(csv_path, "--out", out, "--rgb-out", rgb)[0] == 0
    assert np.isnan(tifffile.imread(out)).all()
    assert (np.asarray(openslide.OpenSlide(rgb).read_region((0, 0), 0, (2, 3)))[..., 3] == 0).all()


@pytest.mark.parametrize("name", ["viridis", "magma", "turbo", "jet", "gray"])
def test_rgb_tiff_colours_are_matplotlibs_own(tmp_path: Path, wsiproc, name: str) -> None:
    """Issue 18: the maps that were typed-in tables now come from matplotlib, colour for colour.

    Window (row, col) of a 16×16 grid holds 16·row + col, so with the range [0, 255] every one
    of the map's 256 entries is drawn once; each TIFF pixel must be matplotlib's own byte colour.
    """
    import matplotlib

    write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=16, grid_cols=16, keep=1.0)
    rows, cols = np.divmod(np.arange(256), 16)
    boxes = np.stack([cols * 448, rows * 448, np.full(256, 448), np.full(256, 448)], axis=1)
    values = np.stack([np.arange(256.0), np.zeros(256)], axis=1).astype(np.float32)
    body = table.format_rows("P1", "S1", rows, cols, boxes, 0, np.ones(256), values)
    csv_path = tmp_path / "windows.csv"
    csv_path.write_text(",".join(table.header(["tumor", "stroma"])) + "\n" + body)
    rgb = tmp_path / "heatmap_rgb.tif"
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", rgb, "--colormap", name]
    assert wsiproc(csv_path, *argv, "--vmin", 0, "--vmax", 255)[0] == 0
    want = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256), bytes=True)
    pixels = tifffile.imread(rgb).reshape(256, 4)
    np.testing.assert_array_equal(pixels, want)
    np.testing.assert_array_equal(lookup_table(name), want[:, :3])


def test_any_matplotlib_colormap_is_a_256_entry_rgb_table() -> None:
    for name in (*COMMON_COLORMAPS, "cividis", "magma_r", "RdBu"):
        lut = lookup_table(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lookup_table("magma_r")[0].tolist() == lookup_table("magma")[255].tolist()


def test_unknown_colormap_is_one_line_saying_how_to_list_the_names(tmp_path: Path, wsiproc) -> None:
    csv_path, _ = write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=2, grid_cols=2)
    out, rgb = tmp_path / "heatmap.tif", tmp_path / "heatmap_rgb.tif"
    code, _, err = wsiproc(csv_path, "--out", out, "--rgb-out", rgb, "--colormap", "viridsi")
    assert code != 0
    assert err == (
        "error: --colormap: unknown colormap 'viridsi'; any name matplotlib knows works, "
        f"listed by: {COLORMAP_HELP}\n"
    )
    assert not out.exists() and not rgb.exists()
    with pytest.raises(ConfigError, match="--colormap: unknown colormap 'Viridis'"):
        lookup_table("Viridis")


def test_window_grid_repr(tmp_path: Path) -> None:
    write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=3, grid_cols=4)
    grid = WindowGrid(read_record(tmp_path / "windows.json"), source="w.csv")
    assert repr(grid) == "WindowGrid('w.csv', raster=3x4x2, windows=0)"


def test_unwritable_output_is_one_error_line(tmp_path: Path, wsiproc) -> None:
    csv_path, _ = write_windows(tmp_path, rng=np.random.default_rng(0), grid_rows=2, grid_cols=2)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "heatmap.tif"
    code, _, err = wsiproc(csv_path, "--out", out, "--rgb-out", tmp_path / "r.tif")
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'file'}:")
