"""Tests of ``wsiproc.slide``: metadata, the two readers cross-checked, and every way to fail.

Finding (pyvips vs OpenSlide, ``Slide(path, reader="pyvips")`` vs ``reader="openslide"``):

* Level 0, any box (also boxes crossing the edges, white outside): **identical** pixels on every
  generated format (pyvips TIFF, tifffile SVS at 20x and 40x, TIFF without resolution). Both
  libraries decode the same JPEG tiles with libjpeg-turbo.
* Whole levels read from the origin: identical at every level.
* Boxes at other origins on levels > 0: **not identical**. The fixtures have odd sizes, so no
  level > 0 has an integer downsample (1531 / 765 = 2.0016, 2011 / 502 = 4.0070, ...).
  OpenSlide is addressed in integer level-0 coordinates: level pixel x becomes
  ``round(x * ds)``, which OpenSlide maps back to ``round(x * ds) / ds`` -- a sub-pixel offset
  of up to 0.5 / ds level pixels that it renders by interpolation. Measured on 64-px boxes:
  max abs pixel difference 5-45, mean over a box within 0.5 per channel. pyvips reads the
  level's own pixels. The engine reads these formats with pyvips (``reader="auto"``), so this
  only matters for vendors that go through OpenSlide. See
  ``test_readers_differ_by_subpixel_offset_at_fractional_downsample``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from wsiproc.errors import SlideOpenError, SlideReadError
from wsiproc.slide import Slide

GOOD_SLIDES = ("tiff_slide", "svs_slide_20x", "svs_slide_40x", "nompp_slide")


def test_tiff_metadata(tiff_slide):
    with Slide(tiff_slide) as slide:
        info = slide.info
    assert info.vendor == "generic-tiff"
    assert (info.width, info.height) == (1531, 1107)
    assert info.level_dimensions[0] == (1531, 1107)
    assert info.level_count >= 3 and info.level_count == len(info.level_dimensions)
    assert info.level_downsamples[:2] == (1.0, pytest.approx(2.0, rel=0.01))
    assert info.mpp_x == pytest.approx(0.5) and info.mpp_y == pytest.approx(0.5)
    assert info.objective_power is None
    assert info.reader == "pyvips"
    d = info.to_dict()
    assert d["level_dimensions"][0] == [1531, 1107] and isinstance(d["level_downsamples"], list)


@pytest.mark.parametrize(
    ("fixture", "size", "mpp", "objective"),
    [
        ("svs_slide_20x", (2011, 1503), 0.5, 20.0),
        ("svs_slide_40x", (4022, 3006), 0.25, 40.0),
    ],
)
def test_svs_metadata(request, fixture, size, mpp, objective):
    path = request.getfixturevalue(fixture)
    with Slide(path) as slide:
        info = slide.info
    assert info.vendor == "aperio"
    assert (info.width, info.height) == size
    assert info.level_count == 3
    assert info.level_dimensions[1] == (size[0] // 4, size[1] // 4)
    assert info.level_downsamples[1] == pytest.approx(4.0, rel=0.01)
    assert info.mpp_x == pytest.approx(mpp)
    assert info.objective_power == objective
    assert info.reader == "pyvips"


def test_slide_without_resolution_has_no_mpp(nompp_slide):
    with Slide(nompp_slide) as slide:
        assert slide.info.mpp_x is None and slide.info.mpp_y is None
        assert slide.info.vendor == "generic-tiff"


def test_openslide_reader_is_selectable(tiff_slide):
    with Slide(tiff_slide, reader="openslide") as slide:
        assert slide.reader == "openslide" and slide.info.reader == "openslide"
    with Slide(tiff_slide, reader="pyvips") as slide:
        assert slide.reader == "pyvips"


@pytest.mark.parametrize("fixture", GOOD_SLIDES)
def test_readers_give_identical_pixels(request, fixture):
    """Whole levels through a box crossing every edge; random level-0 boxes."""
    path = request.getfixturevalue(fixture)
    rng = np.random.default_rng(7)
    with Slide(path, reader="openslide") as osr, Slide(path, reader="pyvips") as vips:
        assert osr.info.level_dimensions == vips.info.level_dimensions
        for level in range(osr.info.level_count):
            w, h = osr.info.level_dimensions[level]
            # Starting at (-13, -7) clamps the read to (0, 0): exact at every level.
            box = (level, -13, -7, w + 29, h + 23)
            a, b = osr.read_region_rgb(*box), vips.read_region_rgb(*box)
            assert a.shape == b.shape == (h + 23, w + 29, 3) and a.dtype == np.uint8
            assert np.array_equal(a, b), (
                f"level {level}: max diff {np.abs(a - b.astype(int)).max()}"
            )
        w, h = osr.info.level_dimensions[0]
        for _ in range(12):
            x, y = int(rng.integers(-40, w)), int(rng.integers(-40, h))
            rw, rh = int(rng.integers(1, 300)), int(rng.integers(1, 300))
            a = osr.read_region_rgb(0, x, y, rw, rh)
            b = vips.read_region_rgb(0, x, y, rw, rh)
            assert np.array_equal(a, b), (x, y, rw, rh)


@pytest.mark.parametrize("fixture", GOOD_SLIDES)
def test_readers_differ_by_subpixel_offset_at_fractional_downsample(request, fixture):
    """Documents the one difference: OpenSlide interpolates a sub-pixel offset on levels > 0."""
    path = request.getfixturevalue(fixture)
    rng = np.random.default_rng(3)
    with Slide(path, reader="openslide") as osr, Slide(path, reader="pyvips") as vips:
        for level in range(1, osr.info.level_count):
            ds = osr.info.level_downsamples[level]
            assert not float(ds).is_integer()  # odd sizes: no level > 0 has an exact downsample
            w, h = osr.info.level_dimensions[level]
            err_same, err_shifted = 0.0, 0.0
            for _ in range(5):
                x, y = int(rng.integers(1, w - 40)), int(rng.integers(1, h - 40))
                a = osr.read_region_rgb(level, x, y, 40, 40).astype(int)
                b = vips.read_region_rgb(level, x, y, 40, 40).astype(int)
                # Same picture, not shifted by whole pixels: box means agree within 1 grey level
                # (a one-pixel shift would also pass means, so check pixels against the shift).
                assert np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max() <= 1.0
                shifted = vips.read_region_rgb(level, x + 1, y, 40, 40).astype(int)
                err_same += np.abs(a - b).mean()
                err_shifted += np.abs(a - shifted).mean()
            assert err_same < err_shifted


@pytest.mark.parametrize("reader", ["openslide", "pyvips"])
@pytest.mark.parametrize("fixture", ["tiff_slide", "svs_slide_20x"])
def test_region_outside_the_slide_is_white(request, fixture, reader):
    path = request.getfixturevalue(fixture)
    with Slide(path, reader=reader) as slide:
        w, h = slide.info.level_dimensions[0]
        inner = slide.read_region_rgb(0, w - 50, h - 40, 50, 40)
        region = slide.read_region_rgb(0, w - 50, h - 40, 120, 100)
        assert np.array_equal(region[:40, :50], inner)
        assert (region[40:] == 255).all() and (region[:, 50:] == 255).all()
        corner = slide.read_region_rgb(0, -30, -20, 60, 50)
        assert (corner[:20] == 255).all() and (corner[:, :30] == 255).all()
        assert np.array_equal(corner[20:, 30:], slide.read_region_rgb(0, 0, 0, 30, 30))
        far = slide.read_region_rgb(0, w + 10, 0, 16, 16)  # nothing inside: no read at all
        assert far.shape == (16, 16, 3) and (far == 255).all()


def test_level_zero_pixels_match_the_written_image(tiff_slide, tiff_image):
    """Orientation and frame check: decoded level 0 is the source image up to JPEG loss."""
    with Slide(tiff_slide) as slide:
        got = slide.read_region_rgb(0, 0, 0, slide.info.width, slide.info.height)
    assert got.shape == tiff_image.shape
    assert np.abs(got.astype(int) - tiff_image).mean() < 3.0


def test_thumbnail_fits_requested_size(svs_slide_20x):
    with Slide(svs_slide_20x) as slide:
        thumb = slide.thumbnail_rgb(256)
    assert max(thumb.shape[:2]) == 256 and thumb.shape[2] == 3 and thumb.dtype == np.uint8


def assert_one_line_naming(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message


@pytest.mark.parametrize("reader", ["auto", "openslide", "pyvips"])
@pytest.mark.parametrize(
    ("fixture", "needle"),
    [
        ("zero_byte_slide", "empty"),
        ("not_a_slide", "not a slide"),
        ("truncated_slide", ""),
    ],
)
def test_unopenable_files_raise_slide_open_error(request, fixture, needle, reader):
    path = request.getfixturevalue(fixture)
    with pytest.raises((SlideOpenError, SlideReadError)) as err:
        with Slide(path, reader=reader) as slide:
            slide.read_region_rgb(0, 0, 0, slide.info.width, slide.info.height)
    assert_one_line_naming(err.value, path)
    assert needle in str(err.value)


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideOpenError) as err:
        Slide(missing)
    assert_one_line_naming(err.value, missing)
    assert "no such file" in str(err.value)
    with pytest.raises(SlideOpenError) as err:
        Slide(tmp_path)
    assert_one_line_naming(err.value, tmp_path)


@pytest.mark.parametrize("reader", ["openslide", "pyvips"])
def test_corrupt_tile_raises_read_error_then_slide_still_reads(corrupt_slide, reader):
    path, (tx, ty, tw, th) = corrupt_slide
    with Slide(path, reader=reader) as slide:
        before = slide.read_region_rgb(0, 0, 0, 200, 150)
        for _ in range(2):  # a failed read never latches: the same read fails the same way
            with pytest.raises(SlideReadError) as err:
                slide.read_region_rgb(0, tx + 10, ty + 20, 64, 64)
            assert_one_line_naming(err.value, path)
            assert "region" in str(err.value)
            assert err.value.region == (0, tx + 10, ty + 20, 64, 64)
            assert f"(level 0, region {tx + 10},{ty + 20} 64×64)" in str(err.value)
            assert "corrupt or truncated tile" in str(err.value)
            # Reopened: other regions read, and give the same pixels as before the error.
            assert np.array_equal(slide.read_region_rgb(0, 0, 0, 200, 150), before)
            assert slide.read_region_rgb(0, tx + tw, ty, 64, 64).shape == (64, 64, 3)
        # The corrupt tile is only in level 0; level 1 holds its downsampled pixels.
        assert slide.read_region_rgb(1, tx // 2, ty // 2, 32, 32).shape == (32, 32, 3)


def test_corrupt_tile_fails_in_openslide_itself(corrupt_slide):
    """The fixture really is corrupt for an independent reader (not a wsiproc artefact)."""
    path, (tx, ty, _, _) = corrupt_slide
    osr = openslide.OpenSlide(str(path))
    try:
        with pytest.raises(openslide.OpenSlideError):
            osr.read_region((tx, ty), 0, (16, 16))
    finally:
        osr.close()
