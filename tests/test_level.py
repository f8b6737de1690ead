"""Tests of the level choice (``wsiproc.level``) and the ``level`` command."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

import wsiproc.cli
from wsiproc.cli import main
from wsiproc.errors import ConfigError, MetadataError
from wsiproc.grid import Grid
from wsiproc.level import SNAP_TOLERANCE, LevelSpec, select_level
from wsiproc.slide import Slide, SlideInfo

KERNEL = 224


@pytest.fixture(autouse=True)
def _present_stages(monkeypatch):
    """Register only the stages whose modules exist yet, so ``level`` runs in any tree state."""
    present = tuple(
        s for s in wsiproc.cli.STAGES if importlib.util.find_spec(f"wsiproc.cli.{s}") is not None
    )
    monkeypatch.setattr(wsiproc.cli, "STAGES", present)


def make_info(
    *,
    mpp: float | None = 0.25,
    objective: float | None = 40.0,
    dims: tuple[tuple[int, int], ...] = ((8000, 6000), (2000, 1500), (500, 375)),
    downsamples: tuple[float, ...] = (1.0, 4.0, 16.0),
) -> SlideInfo:
    """Metadata of an imaginary 40x Aperio slide (levels 1, 4, 16)."""
    return SlideInfo(
        "imaginary.svs",
        "aperio",
        dims[0][0],
        dims[0][1],
        len(dims),
        dims,
        downsamples,
        mpp,
        mpp,
        objective,
        "pyvips",
    )


def test_fixed_level_is_read_as_is():
    plan = select_level(make_info(), LevelSpec(level=1))
    assert (plan.level, plan.level_downsample, plan.scale, plan.resize_factor) == (1, 4.0, 4.0, 1.0)
    assert (plan.proc_width, plan.proc_height) == (2000, 1500)
    assert plan.proc_mpp == pytest.approx(1.0)
    assert plan.mpp_source == "metadata"


def test_default_is_level_zero():
    plan = select_level(make_info(), LevelSpec())
    assert (plan.level, plan.scale, plan.resize_factor) == (0, 1.0, 1.0)


def test_fixed_level_out_of_range_names_the_slide():
    with pytest.raises(ConfigError) as err:
        select_level(make_info(), LevelSpec(level=3))
    assert err.value.key == "level"
    assert "imaginary.svs" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("mpp", "level", "resize"),
    [
        (0.25, 0, 1.0),  # level 0 exactly
        (0.5, 0, 0.5),  # between levels: read level 0, shrink by 2
        (1.0, 1, 1.0),  # level 1 exactly
        (1.01, 1, 1.0),  # within the 2 % snap tolerance of level 1
        (2.0, 1, 0.5),
        (8.0, 2, 0.5),  # coarser than the coarsest level: shrink the coarsest
    ],
)
def test_mpp_picks_coarsest_level_not_coarser_than_target(mpp, level, resize):
    plan = select_level(make_info(), LevelSpec(mpp=mpp))
    assert plan.level == level
    assert plan.resize_factor == pytest.approx(resize)
    assert plan.resize_factor <= 1.0  # resizing only ever shrinks
    if resize == 1.0:
        assert plan.scale == plan.level_downsample
    else:
        assert plan.scale == pytest.approx(mpp / 0.25)
        assert plan.proc_mpp == pytest.approx(mpp)
        assert plan.proc_width == int(8000 / plan.scale)


@pytest.mark.parametrize(
    ("magnification", "objective", "mpp", "level", "scale"),
    [
        (40, 40.0, 0.25, 0, 1.0),
        (20, 40.0, 0.25, 0, 2.0),
        (10, 40.0, 0.25, 1, 4.0),
        (20, None, 0.25, 0, 2.0),  # no objective power: 10 / mpp = 40x
        (10, 20.0, None, 0, 2.0),  # no mpp: the objective power alone
    ],
)
def test_magnification_uses_objective_power_or_mpp(magnification, objective, mpp, level, scale):
    plan = select_level(
        make_info(mpp=mpp, objective=objective), LevelSpec(magnification=magnification)
    )
    assert plan.level == level
    assert plan.scale == pytest.approx(scale)


def test_mpp_target_without_slide_mpp_is_an_error_naming_the_slide():
    with pytest.raises(MetadataError) as err:
        select_level(make_info(mpp=None), LevelSpec(mpp=0.5))
    message = str(err.value)
    assert "imaginary.svs" in message and "mpp" in message and "\n" not in message
    with pytest.raises(MetadataError):
        select_level(make_info(mpp=None, objective=None), LevelSpec(magnification=20))


def test_fallback_mpp_applies_only_when_the_slide_has_none():
    plan = select_level(make_info(mpp=None), LevelSpec(mpp=0.5, fallback_mpp=0.25))
    assert plan.mpp_source == "fallback"
    assert plan.scale == pytest.approx(2.0)
    # The slide's own metadata wins over the fallback.
    plan = select_level(make_info(mpp=0.5), LevelSpec(mpp=0.5, fallback_mpp=0.25))
    assert (plan.mpp_source, plan.scale) == ("metadata", 1.0)


def test_sheet_mpp_overrides_slide_metadata():
    plan = select_level(make_info(mpp=0.25), LevelSpec(mpp=1.0, slide_mpp=0.5))
    assert plan.mpp_source == "override"
    assert plan.scale == pytest.approx(2.0)
    assert plan.proc_mpp == pytest.approx(1.0)
    # A fixed level reports the overridden mpp too.
    assert select_level(make_info(), LevelSpec(level=1, slide_mpp=0.5)).proc_mpp == 2.0


def test_no_mpp_anywhere_leaves_proc_mpp_unknown():
    plan = select_level(make_info(mpp=None), LevelSpec(level=1))
    assert plan.proc_mpp is None and plan.mpp_source == "none"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": 1, "mpp": 0.5},
        {"mpp": 0.5, "magnification": 20},
        {"mpp": -0.5},
        {"mpp": float("nan")},
        {"magnification": 0},
        {"fallback_mpp": float("inf")},
        {"level": -1},
    ],
)
def test_bad_level_spec_is_a_config_error(kwargs):
    with pytest.raises(ConfigError) as err:
        LevelSpec(**kwargs)
    assert "\n" not in str(err.value)


LEVEL_FUNCTION = """
def pick(meta):
    # the coarsest level whose width is still at least 1000 px
    best = 0
    for i, (w, h) in enumerate(meta["level_dimensions"]):
        if w >= 1000:
            best = i
    return best

def bad_type(meta):
    return "1"

def boom(meta):
    raise RuntimeError("no luck")
"""


def test_level_function_from_module(tmp_path, monkeypatch):
    (tmp_path / "my_levels.py").write_text(textwrap.dedent(LEVEL_FUNCTION))
    monkeypatch.syspath_prepend(str(tmp_path))
    plan = select_level(make_info(), LevelSpec(function="my_levels:pick"))
    assert (plan.level, plan.scale, plan.resize_factor) == (1, 4.0, 1.0)


def test_level_function_from_file(tmp_path):
    path = tmp_path / "levels_file.py"
    path.write_text(textwrap.dedent(LEVEL_FUNCTION))
    plan = select_level(make_info(), LevelSpec(function=f"{path}:pick"))
    assert plan.level == 1


@pytest.mark.parametrize(
    ("func", "needle"),
    [
        ("bad_type", "expected a level index"),
        ("boom", "no luck"),
        ("missing_name", "cannot load"),
    ],
)
def test_level_function_failures_are_config_errors(tmp_path, func, needle):
    path = tmp_path / "levels_bad.py"
    path.write_text(textwrap.dedent(LEVEL_FUNCTION))
    with pytest.raises(ConfigError) as err:
        select_level(make_info(), LevelSpec(function=f"{path}:{func}"))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_level_function_missing_file_or_bad_reference(tmp_path):
    with pytest.raises(ConfigError) as err:
        select_level(make_info(), LevelSpec(function=f"{tmp_path / 'nope.py'}:pick"))
    assert "nope.py" in str(err.value)
    with pytest.raises(ConfigError):
        select_level(make_info(), LevelSpec(function="no_colon_here"))
    with pytest.raises(ConfigError):
        select_level(make_info(), LevelSpec(function="wsiproc_no_such_module_xyz:pick"))


def test_level_function_returning_missing_level(tmp_path):
    path = tmp_path / "levels_far.py"
    path.write_text("def far(meta):\n    return meta['level_count']\n")
    with pytest.raises(ConfigError) as err:
        select_level(make_info(), LevelSpec(function=f"{path}:far"))
    assert "level 3" in str(err.value)


def test_20x_and_40x_slides_give_same_processing_resolution(svs_slide_20x, svs_slide_40x):
    """Target 0.5 mpp: both slides are processed at 0.5 µm/px, with windows of equal size."""
    plans = {}
    for name, path in (("20x", svs_slide_20x), ("40x", svs_slide_40x)):
        with Slide(path) as slide:
            info = slide.info
        plan = select_level(info, LevelSpec(mpp=0.5))
        grid = Grid(plan.proc_width, plan.proc_height, KERNEL, KERNEL, "valid", plan.scale)
        box = grid.l0_boxes([0], [1])[0]
        plans[name] = (info, plan, box)
    (info20, plan20, box20), (info40, plan40, box40) = plans["20x"], plans["40x"]
    assert info20.mpp_x == pytest.approx(0.5) and info40.mpp_x == pytest.approx(0.25)
    assert plan20.proc_mpp == pytest.approx(0.5) and plan40.proc_mpp == pytest.approx(0.5)
    assert (plan20.level, plan20.resize_factor) == (0, 1.0)
    assert plan40.level == 0 and plan40.resize_factor == pytest.approx(0.5)
    # Same physical window: level-0 width times level-0 mpp.
    assert box20[2] * info20.mpp_x == pytest.approx(box40[2] * info40.mpp_x)
    assert box20[2] * info20.mpp_x == pytest.approx(KERNEL * 0.5)
    # Same physical step between windows.
    assert box20[0] * info20.mpp_x == pytest.approx(box40[0] * info40.mpp_x)
    # Same processing size, up to the 40x slide's one odd level-0 pixel.
    assert abs(plan20.proc_width - plan40.proc_width) <= 1
    assert abs(plan20.proc_height - plan40.proc_height) <= 1


def test_20x_and_40x_same_magnification(svs_slide_20x, svs_slide_40x):
    scales = []
    for path in (svs_slide_20x, svs_slide_40x):
        with Slide(path) as slide:
            plan = select_level(slide.info, LevelSpec(magnification=10))
            scales.append(plan.scale * slide.info.mpp_x)
    # Level 1 of the 40x slide (downsample 4022/1005) is within the snap tolerance of 4.
    assert scales[0] == pytest.approx(1.0)
    assert scales[1] == pytest.approx(1.0, rel=SNAP_TOLERANCE)


def test_level_command_writes_level_json(tiff_slide, tmp_path):
    out = tmp_path / "level.json"
    thumb, mask = tmp_path / "thumb.png", tmp_path / "mask.png"
    rc = main(
        [
            "level",
            str(tiff_slide),
            "--out",
            str(out),
            "--mpp",
            "1.0",
            "--thumbnail",
            str(thumb),
            "--mask",
            str(mask),
        ]
    )
    assert rc == 0
    record = json.loads(out.read_text())
    for key in (
        "path",
        "vendor",
        "width",
        "height",
        "level_count",
        "level_dimensions",
        "level_downsamples",
        "mpp_x",
        "mpp_y",
        "objective_power",
        "reader",
        "spec",
        "mpp_source",
        "level",
        "level_downsample",
        "scale",
        "proc_mpp",
        "resize_factor",
        "proc_width",
        "proc_height",
        "thumbnail",
        "mask",
        "thumbnail_scale",
        "tissue_percent",
    ):
        assert key in record, key
    assert record["spec"] == {"mpp": 1.0}
    # Level 1 (downsample 1531/765) is within the snap tolerance of 2: read as is.
    assert record["level"] == 1 and record["resize_factor"] == 1.0
    assert record["scale"] == record["level_downsample"] == pytest.approx(2.0, rel=SNAP_TOLERANCE)
    assert record["proc_mpp"] == pytest.approx(1.0, rel=SNAP_TOLERANCE)
    assert thumb.exists() and mask.exists()
    assert 0 < record["tissue_percent"] < 100


def test_level_command_missing_mpp_is_one_error_line(nompp_slide, tmp_path, capsys):
    out = tmp_path / "level.json"
    assert main(["level", str(nompp_slide), "--out", str(out), "--mpp", "0.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(nompp_slide) in err[0]
    assert not out.exists()
    assert (
        main(
            ["level", str(nompp_slide), "--out", str(out), "--mpp", "0.5", "--fallback-mpp", "0.25"]
        )
        == 0
    )
    record = json.loads(out.read_text())
    assert record["mpp_source"] == "fallback"
    assert record["proc_mpp"] == pytest.approx(0.5, rel=SNAP_TOLERANCE)


@pytest.mark.parametrize("spec", [LevelSpec(mpp=0.125), LevelSpec(magnification=80)])
def test_target_finer_than_level_0_is_refused_naming_both(spec):
    with pytest.raises(MetadataError) as err:
        select_level(make_info(), spec)
    message = str(err.value)
    assert message.startswith("imaginary.svs: target ") and "\n" not in message
    assert "finer than level 0 (0.25 µm/px)" in message and "--allow-upsampling" in message
    assert "upsampled 2x" in message


def test_upsampling_when_allowed_is_recorded():
    plan = select_level(make_info(), LevelSpec(mpp=0.125, allow_upsampling=True))
    assert plan.upsampled and plan.level == 0 and plan.resize_factor == pytest.approx(2.0)
    assert not select_level(make_info(), LevelSpec(mpp=0.25)).upsampled


def test_magnification_honours_the_sheet_mpp_over_the_objective_power():
    # The scanner says 40x at 0.25 µm/px; the sheet corrects it to 0.5 µm/px (a 20x scan).
    corrected = select_level(make_info(), LevelSpec(magnification=20, slide_mpp=0.5))
    assert (corrected.level, corrected.scale, corrected.proc_mpp) == (0, 1.0, 0.5)
    as_recorded = select_level(make_info(), LevelSpec(magnification=20))
    assert as_recorded.scale == 2.0 and as_recorded.proc_mpp == 0.5


@pytest.mark.parametrize(
    ("source", "flagged"),
    [("metadata", False), ("override", False), ("fallback", True), ("none", True)],
)
def test_missing_mpp_only_when_the_slide_had_none(source, flagged):
    from wsiproc.qc import metrics

    flags = metrics.flags(
        tissue_percent=50.0, windows_processed=10, blur_score=100.0, pen_fraction=0.0,
        mpp_source=source,
    )  # fmt: skip
    assert ("missing_mpp" in flags) == flagged
