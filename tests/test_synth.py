"""Tests of wsiproc.synth's painting and TIFF writers: each slide is what OpenSlide and pyvips
say it is."""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import openslide
import pytest
import pyvips
import yaml
from PIL import Image

from wsiproc import synth
from wsiproc.cli import demo as demo_cli

#: Mean absolute difference (grey levels) allowed between source pixels and a JPEG read-back.
JPEG_TOLERANCE = 6.0


def read_level(path: Path, level: int = 0) -> np.ndarray:
    """Whole pyramid level as an H×W×3 uint8 array, through OpenSlide."""
    with openslide.OpenSlide(path) as slide:
        size = slide.level_dimensions[level]
        return np.asarray(slide.read_region((0, 0), level, size).convert("RGB"))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two equally shaped uint8 arrays."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def near_white(image: np.ndarray) -> np.ndarray:
    """Pixels bright enough to be bare glass."""
    return image.min(axis=2) > 225


def green_ink(image: np.ndarray) -> np.ndarray:
    """Pixels with a green hue (75-185°) and saturation >= 0.25, as marker ink looks."""
    hsv = np.asarray(Image.fromarray(image.astype(np.uint8)).convert("HSV")).astype(np.float32)
    hue_deg = hsv[..., 0] * 360 / 255
    return (hue_deg >= 75) & (hue_deg < 185) & (hsv[..., 1] >= 0.25 * 255)


# --- tissue_image ---------------------------------------------------------------------------


def test_tissue_image_is_deterministic_per_seed() -> None:
    first = synth.tissue_image(401, 303, seed=3)
    assert first.shape == (303, 401, 3)
    assert first.dtype == np.uint8
    assert np.array_equal(first, synth.tissue_image(401, 303, seed=3))
    assert not np.array_equal(first, synth.tissue_image(401, 303, seed=4))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tissue_covers_30_to_45_percent_on_light_glass(seed: int) -> None:
    image = synth.tissue_image(900, 600, seed=seed)
    tissue = ~near_white(image)
    assert 0.30 <= tissue.mean() <= 0.45
    # Glass is about (240, 240, 240) with +-3 grain (nuclei may spill a pixel past the edge).
    glass = image[~tissue].astype(np.int16)
    assert np.percentile(np.abs(glass - 240), 99) <= 3
    # Eosin pink: green absorbs most, so tissue is redder and bluer than it is green.
    pixels = image[tissue].astype(np.int16)
    assert (pixels[:, 1] < pixels[:, 0]).mean() > 0.95
    assert (pixels[:, 1] < pixels[:, 2]).mean() > 0.95


def test_tissue_false_gives_glass_only() -> None:
    image = synth.tissue_image(640, 480, seed=5, tissue=False)
    assert near_white(image).all()


def test_pen_mark_adds_green_stroke() -> None:
    plain = synth.tissue_image(900, 600, seed=6)
    marked = synth.tissue_image(900, 600, seed=6, pen_mark=True)
    assert 0.05 <= green_ink(marked).mean() <= 0.10
    assert not green_ink(plain).any()


def test_tissue_image_rejects_empty_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        synth.tissue_image(0, 10, seed=0)


# --- write_pyramidal_tiff -------------------------------------------------------------------


def test_tiff_slide_is_generic_tiff_with_halving_levels_and_mpp(tiff_slide: Path) -> None:
    with openslide.OpenSlide(tiff_slide) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.dimensions == (1531, 1107)
        dims = slide.level_dimensions
        # pyvips halves (rounding down) until a level fits one 256×256 tile.
        assert dims == ((1531, 1107), (765, 553), (382, 276), (191, 138))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == 0.5
        assert slide.properties["tiff.ResolutionUnit"] == "centimeter"
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in slide.properties


def test_tiff_slide_pixels_match_source(tiff_slide: Path, tiff_image: np.ndarray) -> None:
    assert mean_abs_diff(read_level(tiff_slide), tiff_image) < JPEG_TOLERANCE


def test_pyvips_reads_tiff_resolution_as_pixels_per_mm(tiff_slide: Path) -> None:
    image = pyvips.Image.new_from_file(str(tiff_slide))
    assert image.xres == pytest.approx(1000 / 0.5)
    assert image.get("resolution-unit") == "cm"


def test_tiff_without_mpp_gets_pyvips_default_of_1000_um(tmp_path: Path) -> None:
    """pyvips always writes a resolution (25.4 px/inch), which OpenSlide turns into 1000 mpp."""
    path = synth.write_pyramidal_tiff(tmp_path / "a.tif", synth.tissue_image(300, 200, seed=0))
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(1000.0)


# --- write_svs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "size", "mpp", "power"),
    [
        ("svs_slide_20x", (2011, 1503), 0.5, "20"),
        ("svs_slide_40x", (4022, 3006), 0.25, "40"),
    ],
)
def test_svs_is_aperio_with_mpp_power_and_quarter_levels(
    request: pytest.FixtureRequest, fixture: str, size: tuple[int, int], mpp: float, power: str
) -> None:
    path = request.getfixturevalue(fixture)
    width, height = size
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert slide.level_count == 3
        assert slide.level_dimensions == (
            (width, height),
            (width // 4, height // 4),
            (width // 16, height // 16),
        )
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == mpp
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == mpp
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == power
        assert slide.properties["aperio.AppMag"] == power
        assert list(slide.associated_images) == ["thumbnail"]
        thumb = slide.associated_images["thumbnail"]
        assert max(thumb.size) == 768


@pytest.mark.parametrize("magnification", ["20x", "40x"])
def test_svs_levels_match_source(request: pytest.FixtureRequest, magnification: str) -> None:
    path = request.getfixturevalue(f"svs_slide_{magnification}")
    source = request.getfixturevalue(f"svs_image_{magnification}")
    assert mean_abs_diff(read_level(path, 0), source) < JPEG_TOLERANCE
    assert mean_abs_diff(read_level(path, 1), synth.downsample(source, 4)) < JPEG_TOLERANCE
    level2 = synth.downsample(synth.downsample(source, 4), 4)
    assert mean_abs_diff(read_level(path, 2), level2) < JPEG_TOLERANCE


def test_svs_20x_and_40x_show_the_same_tissue(svs_slide_20x: Path, svs_slide_40x: Path) -> None:
    low = read_level(svs_slide_20x, 0)
    high = synth.downsample(read_level(svs_slide_40x, 0), 2)
    assert high.shape == low.shape
    assert mean_abs_diff(high, low) < JPEG_TOLERANCE


def test_svs_description_follows_aperio_layout(svs_slide_20x: Path) -> None:
    with openslide.OpenSlide(svs_slide_20x) as slide:
        description = slide.properties["tiff.ImageDescription"]
    assert description == (
        "Aperio Image Library v12.0.15 \n2011x1503 [0,0 2011x1503] (256x256) JPEG/RGB Q=90"
        "|AppMag = 20|MPP = 0.5"
    )


def test_writers_are_byte_identical_on_rerun(tmp_path: Path) -> None:
    image = synth.tissue_image(700, 500, seed=9)

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for name in ("a", "b"):
        synth.write_svs(tmp_path / f"{name}.svs", image, mpp=0.5, magnification=20)
        synth.write_pyramidal_tiff(tmp_path / f"{name}.tif", image, mpp=0.5)
        synth.write_plain_tiff_no_metadata(tmp_path / f"{name}_plain.tif", image)
    assert digest(tmp_path / "a.svs") == digest(tmp_path / "b.svs")
    assert digest(tmp_path / "a.tif") == digest(tmp_path / "b.tif")
    assert digest(tmp_path / "a_plain.tif") == digest(tmp_path / "b_plain.tif")


# --- write_plain_tiff_no_metadata -----------------------------------------------------------


def test_nompp_slide_has_levels_but_no_mpp(nompp_slide: Path, nompp_image: np.ndarray) -> None:
    with openslide.OpenSlide(nompp_slide) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_dimensions == ((1201, 901), (600, 450), (300, 225), (150, 112))
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties
        assert openslide.PROPERTY_NAME_MPP_Y not in slide.properties
        assert slide.properties["tiff.ResolutionUnit"] == "none"
    assert mean_abs_diff(read_level(nompp_slide), nompp_image) < JPEG_TOLERANCE


# --- broken slides --------------------------------------------------------------------------


def test_corrupt_tile_box_is_the_middle_level0_tile(
    corrupt_slide: tuple[Path, tuple[int, int, int, int]],
) -> None:
    _, box = corrupt_slide
    assert box == (1024, 1024, 256, 256)


def test_corrupt_tile_fails_openslide_read_and_latches(
    corrupt_slide: tuple[Path, tuple[int, int, int, int]],
) -> None:
    path, (x, y, w, h) = corrupt_slide
    with openslide.OpenSlide(path) as slide:
        slide.read_region((0, 0), 0, (256, 256))  # other tiles decode
        with pytest.raises(openslide.OpenSlideError, match="Not a JPEG file"):
            slide.read_region((x, y), 0, (w, h))
        # OpenSlide errors latch: the handle is dead even for good tiles.
        with pytest.raises(openslide.OpenSlideError):
            slide.read_region((0, 0), 0, (256, 256))
    with openslide.OpenSlide(path) as slide:
        slide.read_region((0, 0), 1, slide.level_dimensions[1])  # other levels are intact


@pytest.mark.parametrize("fail_on", ["none", "truncated", "error", "warning"])
def test_corrupt_tile_fails_pyvips_read_at_any_fail_on(
    corrupt_slide: tuple[Path, tuple[int, int, int, int]], fail_on: str
) -> None:
    path, (x, y, w, h) = corrupt_slide
    image = pyvips.Image.new_from_file(str(path), page=0, fail_on=fail_on)
    with pytest.raises(pyvips.Error, match="Not a JPEG file"):
        image.crop(x, y, w, h).write_to_memory()
    image = pyvips.Image.new_from_file(str(path), page=0, fail_on=fail_on)
    assert len(image.crop(0, 0, 256, 256).write_to_memory()) == 256 * 256 * 3


def test_corrupt_tile_on_svs_returns_level0_box_of_higher_level(tmp_path: Path) -> None:
    path = synth.write_svs(
        tmp_path / "c.svs", synth.tissue_image(2048, 2048, seed=1), mpp=0.5, magnification=20
    )
    assert synth.corrupt_tile(path, level=1, tile_index=0) == (0, 0, 1024, 1024)
    with openslide.OpenSlide(path) as slide:
        slide.read_region((0, 0), 0, (256, 256))
        with pytest.raises(openslide.OpenSlideError):
            slide.read_region((0, 0), 1, (64, 64))


@pytest.mark.parametrize("fixture", ["zero_byte_slide", "truncated_slide", "not_a_slide"])
def test_unopenable_files_are_rejected_by_both_readers(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    path = request.getfixturevalue(fixture)
    assert path.exists()
    assert openslide.OpenSlide.detect_format(path) is None
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(path)
    with pytest.raises(pyvips.Error):
        pyvips.Image.new_from_file(str(path))


# --- demo_cohort ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A demo cohort written once through the ``wsiproc demo`` subcommand; (dir, stdout)."""
    directory = tmp_path_factory.mktemp("demo")
    parser = argparse.ArgumentParser()
    demo_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", str(directory), "--seed", "0"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.run(args) == 0
    return directory, out.getvalue()


@pytest.fixture
def demo_dir(demo_run: tuple[Path, str]) -> Path:
    """Directory of the module's demo cohort."""
    return demo_run[0]


def read_sheet(directory: Path) -> list[dict[str, str]]:
    """Rows of the demo's samples.tsv."""
    with open(directory / "samples.tsv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_demo_sheet_has_patients_slides_and_formats(demo_dir: Path) -> None:
    rows = read_sheet(demo_dir)
    assert list(rows[0]) == ["patient", "slide", "path", "mpp"]
    assert len({row["patient"] for row in rows}) >= 3
    assert len(rows) >= 5
    assert len({row["slide"] for row in rows}) == len(rows)
    per_patient = [sum(r["patient"] == p for r in rows) for p in {r["patient"] for r in rows}]
    assert max(per_patient) >= 2
    vendors = set()
    for row in rows:
        assert not Path(row["path"]).is_absolute()
        path = demo_dir / row["path"]
        assert path.is_file()
        with openslide.OpenSlide(path) as slide:
            vendors.add(slide.properties[openslide.PROPERTY_NAME_VENDOR])
            has_mpp = openslide.PROPERTY_NAME_MPP_X in slide.properties
        # The sheet gives an mpp exactly where the file has none.
        assert bool(row["mpp"]) == (not has_mpp)
    assert vendors == {"aperio", "generic-tiff"}


def test_demo_svs_20x_and_40x_cover_the_same_physical_size(demo_dir: Path) -> None:
    sizes_um = set()
    powers = set()
    for row in read_sheet(demo_dir):
        if not row["path"].endswith(".svs"):
            continue
        with openslide.OpenSlide(demo_dir / row["path"]) as slide:
            mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
            powers.add(slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
            sizes_um.add((slide.dimensions[0] * mpp, slide.dimensions[1] * mpp))
    assert powers == {"20", "40"}
    assert sizes_um == {(1500.0, 1000.0)}


def test_demo_has_one_glass_only_slide_and_one_pen_marked(demo_dir: Path) -> None:
    glass, pen = [], []
    for row in read_sheet(demo_dir):
        with openslide.OpenSlide(demo_dir / row["path"]) as slide:
            thumb = np.asarray(slide.get_thumbnail((512, 512)).convert("RGB"))
        if near_white(thumb).all():
            glass.append(row["slide"])
        if green_ink(thumb).mean() > 0.05:
            pen.append(row["slide"])
    assert len(glass) == 1
    assert len(pen) == 1


def test_demo_config_loads_with_absolute_paths(demo_dir: Path) -> None:
    config = yaml.safe_load((demo_dir / "config.yaml").read_text(encoding="utf-8"))
    assert Path(config["samples"]) == (demo_dir / "samples.tsv").resolve()
    assert Path(config["outdir"]).is_absolute()
    assert Path(config["logdir"]).is_absolute()
    assert config["level"] == {"mpp": 1.0}
    assert config["window"] == {
        "kernel_size": 64,
        "stride": 32,
        "border": "valid",
        "min_tissue": 0.25,
    }
    assert config["model"]["path"] == "builtin:stain"
    assert config["heatmap"]["output"] is None
    assert config["qc"] == {
        "blur_threshold": 20.0,
        "pen_threshold": 0.002,
        "min_tissue_percent": 0.5,
    }


def test_demo_command_prints_sheet_config_and_snakemake_call(demo_run: tuple[Path, str]) -> None:
    directory, out = demo_run
    config = (directory / "config.yaml").resolve()
    assert f"snakemake --cores 2 --configfile {config}" in out
    assert str((directory / "samples.tsv").resolve()) in out
