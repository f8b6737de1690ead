"""End-to-end tests of the streaming engine through ``wsiproc infer``.

Runs go through ``wsiproc.cli.main([...])`` in-process, except the kill test, which needs a
separate process group to SIGKILL. Every numeric claim is checked against an independent read
with OpenSlide's own ``read_region``.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import pytest
from _kill import kill_after_two_checkpoints
from PIL import Image

import wsiproc.cli
from wsiproc import synth
from wsiproc.cli import main
from wsiproc.grid import Grid, plan_chunks
from wsiproc.stream.checkpoint import INDEX_FILE, Checkpoint
from wsiproc.stream.engine import partial_dir
from wsiproc.stream.plan import plan_groups
from wsiproc.table import META_COLUMNS

TESTS_DIR = Path(__file__).resolve().parent
SLOW_COLLECTOR = f"{TESTS_DIR / '_slow_collector.py'}:SlowMeanRGB"
MEAN_RGB = ("mean_r", "mean_g", "mean_b")


@pytest.fixture(autouse=True)
def _present_stages(monkeypatch):
    """Register only the stages whose modules exist yet, so ``infer`` runs in any tree state."""
    present = tuple(
        s for s in wsiproc.cli.STAGES if importlib.util.find_spec(f"wsiproc.cli.{s}") is not None
    )
    monkeypatch.setattr(wsiproc.cli, "STAGES", present)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def make_slide(tmp_path_factory):
    """Factory of small pyramidal TIFFs (0.5 mpp), cached per (width, height, tissue)."""
    directory = tmp_path_factory.mktemp("engine_slides")
    cache: dict[tuple[int, int, bool], Path] = {}

    def make(width: int, height: int, *, tissue: bool = True) -> Path:
        key = (width, height, tissue)
        if key not in cache:
            image = synth.tissue_image(width, height, seed=width * 7 + height, tissue=tissue)
            name = f"{'tissue' if tissue else 'glass'}_{width}x{height}.tif"
            cache[key] = synth.write_pyramidal_tiff(directory / name, image, mpp=0.5)
        return cache[key]

    return make


def infer(slide: Path, out: Path, kernel: int, stride: int, *args: str) -> int:
    """Run ``wsiproc infer`` in-process; return the exit code."""
    argv = [
        "infer",
        str(slide),
        "--out",
        str(out),
        "--kernel-size",
        str(kernel),
        "--stride",
        str(stride),
        "--quiet",
        "--device",
        "cpu",
        *args,
    ]
    return main(argv)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a windows CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r, strict=True)) for r in reader]
    return header, rows


def read_meta(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


def cells(rows: list[dict[str, str]]) -> list[tuple[int, int]]:
    return [(int(r["row"]), int(r["col"])) for r in rows]


def conv2d_len(size: int, kernel: int, stride: int) -> int:
    return 0 if size < kernel else (size - kernel) // stride + 1


def error_line(capsys) -> str:
    """The single stderr line of a failed run (asserts there is exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def openslide_window(
    osr: openslide.OpenSlide, row: dict[str, str], level: int, kernel: int
) -> np.ndarray:
    """The window of a CSV row read independently with OpenSlide, as kernel×kernel RGB.

    At ``level`` (no resize) the level-0 box origin is read at that level; otherwise (level
    < 0) the level-0 box is read at level 0 and resized to the kernel with PIL. Transparent
    (outside) pixels are composited onto white.
    """
    x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
    if level >= 0:
        region = osr.read_region((x, y), level, (kernel, kernel))
    else:
        region = osr.read_region((x, y), 0, (w, h))
    rgba = np.asarray(region).astype(np.float64)
    alpha = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if level < 0:
        rgb = np.asarray(Image.fromarray(rgb).resize((kernel, kernel), Image.Resampling.BILINEAR))
    return rgb


def sample_rows(rows: list[dict[str, str]], n_rows: int, n_cols: int, k: int = 25) -> list[dict]:
    """A reproducible sample of rows including every border row and column's corners."""
    by_cell = {(int(r["row"]), int(r["col"])): r for r in rows}
    border = {(0, 0), (0, n_cols - 1), (n_rows - 1, 0), (n_rows - 1, n_cols - 1)}
    border |= {(n_rows - 1, c) for c in range(0, n_cols, max(1, n_cols // 4))}
    border |= {(r, n_cols - 1) for r in range(0, n_rows, max(1, n_rows // 4))}
    rng = np.random.default_rng(0)
    picks = rng.choice(len(rows), size=min(k, len(rows)), replace=False)
    chosen = {cells([rows[i]])[0] for i in picks} | border
    return [by_cell[c] for c in sorted(chosen) if c in by_cell]


def assert_means_match(
    slide: Path, rows: list[dict], level: int, kernel: int, tolerance: float
) -> float:
    """Every sampled row's mean RGB equals an OpenSlide read's; returns the worst difference."""
    osr = openslide.OpenSlide(str(slide))
    worst = 0.0
    try:
        for row in rows:
            expected = openslide_window(osr, row, level, kernel).reshape(-1, 3).mean(axis=0)
            got = np.array([float(row[n]) for n in MEAN_RGB])
            diff = float(np.abs(got - expected).max())
            worst = max(worst, diff)
            assert diff <= tolerance, (row["row"], row["col"], got, expected)
    finally:
        osr.close()
    return worst


# --------------------------------------------------------------------------- geometry

# (width, height, kernel, stride): random draws (fixed seed) plus the edge cases.
_rng = np.random.default_rng(20240611)
GEOMETRY_CASES = [
    (
        int(_rng.integers(150, 700)),
        int(_rng.integers(150, 700)),
        int(_rng.integers(16, 120)),
        int(_rng.integers(8, 150)),
    )
    for _ in range(3)
] + [
    (410, 287, 24, 70),  # stride > kernel: gaps between windows
    (100, 90, 128, 64),  # slide smaller than one window
]


@pytest.mark.parametrize(("width", "height", "kernel", "stride"), GEOMETRY_CASES)
def test_valid_border_rows_are_exactly_the_conv2d_positions(
    make_slide, tmp_path, width, height, kernel, stride
):
    slide = make_slide(width, height)
    out = tmp_path / "windows.csv"
    rc = infer(
        slide,
        out,
        kernel,
        stride,
        "--min-tissue",
        "0",
        "--border",
        "valid",
        "--workers",
        "1",
        "--chunk-px",
        "256",
    )
    assert rc == 0
    header, rows = read_table(out)
    assert header == [*META_COLUMNS, *MEAN_RGB]
    n_rows, n_cols = conv2d_len(height, kernel, stride), conv2d_len(width, kernel, stride)
    expected = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    assert cells(rows) == expected  # every position once, sorted by (row, col)
    for row in rows:
        r, c = int(row["row"]), int(row["col"])
        assert (int(row["x"]), int(row["y"])) == (c * stride, r * stride)
        assert int(row["width"]) == int(row["height"]) == kernel
        assert int(row["x"]) + kernel <= width and int(row["y"]) + kernel <= height
        assert row["level"] == "0"
    meta = read_meta(out)
    assert (meta["grid_rows"], meta["grid_cols"]) == (n_rows, n_cols)
    assert meta["windows_total"] == meta["windows_processed"] == n_rows * n_cols
    assert meta["windows_skipped"] == 0
    assert not partial_dir(out).exists()
    if n_rows == 0:
        assert out.read_text() == ",".join(header) + "\n"


def test_pad_border_covers_last_pixel_row_and_column(tiff_slide, tmp_path):
    """Pad windows reach the last pixel; their mean RGB matches OpenSlide with white outside."""
    kernel = stride = 64
    out = tmp_path / "windows.csv"
    assert infer(tiff_slide, out, kernel, stride, "--min-tissue", "0", "--border", "pad") == 0
    _, rows = read_table(out)
    width, height = 1531, 1107
    n_rows, n_cols = -(-height // stride), -(-width // stride)
    assert cells(rows) == [(r, c) for r in range(n_rows) for c in range(n_cols)]
    last = rows[-1]
    assert int(last["x"]) < width <= int(last["x"]) + int(last["width"])
    assert int(last["y"]) < height <= int(last["y"]) + int(last["height"])
    # Border windows are partly white padding; means still match an independent read.
    worst = assert_means_match(tiff_slide, sample_rows(rows, n_rows, n_cols), 0, kernel, 1.0)
    assert worst <= 1.0
    corner = rows[-1]
    assert min(float(corner[n]) for n in MEAN_RGB) > 200  # mostly white padding


# --------------------------------------------------------------------------- values


def test_mean_rgb_matches_openslide_at_level_0(tiff_slide, tmp_path):
    out = tmp_path / "windows.csv"
    kernel, stride = 96, 80
    assert infer(tiff_slide, out, kernel, stride, "--min-tissue", "0") == 0
    _, rows = read_table(out)
    meta = read_meta(out)
    sample = sample_rows(rows, meta["grid_rows"], meta["grid_cols"])
    assert assert_means_match(tiff_slide, sample, 0, kernel, 1.0) <= 1.0


def test_mean_rgb_matches_openslide_at_level_1(tiff_slide, tmp_path):
    out = tmp_path / "windows.csv"
    kernel = stride = 48
    assert infer(tiff_slide, out, kernel, stride, "--min-tissue", "0", "--level", "1") == 0
    _, rows = read_table(out)
    meta = read_meta(out)
    assert meta["level"] == 1 and meta["resize_factor"] == 1.0
    ds = meta["level_downsample"]
    assert meta["scale"] == ds
    assert all(row["level"] == "1" for row in rows)
    # Level-0 boxes: round(col * stride * ds), width round(kernel * ds).
    for row in rows[:: max(1, len(rows) // 20)]:
        assert int(row["x"]) == round(int(row["col"]) * stride * ds)
        assert int(row["width"]) == round(kernel * ds)
    sample = sample_rows(rows, meta["grid_rows"], meta["grid_cols"])
    # OpenSlide renders level 1 at a sub-pixel offset (see test_slide): means within 1.0.
    assert assert_means_match(tiff_slide, sample, 1, kernel, 1.0) <= 1.0


def test_mean_rgb_matches_openslide_with_resize(tiff_slide, tmp_path):
    """Target 0.8 mpp on a 0.5 mpp slide: read level 0 and shrink by 0.625."""
    out = tmp_path / "windows.csv"
    kernel, stride = 40, 36
    assert (
        infer(
            tiff_slide,
            out,
            kernel,
            stride,
            "--min-tissue",
            "0",
            "--mpp",
            "0.8",
            "--border",
            "pad",
            "--chunk-px",
            "300",
        )
        == 0
    )
    _, rows = read_table(out)
    meta = read_meta(out)
    assert meta["level"] == 0
    assert meta["scale"] == pytest.approx(1.6)
    assert meta["resize_factor"] == pytest.approx(0.625)
    assert meta["proc_mpp"] == pytest.approx(0.8)
    assert (meta["proc_width"], meta["proc_height"]) == (int(1531 / 1.6), int(1107 / 1.6))
    assert all(int(r["width"]) == round(kernel * 1.6) for r in rows)
    sample = sample_rows(rows, meta["grid_rows"], meta["grid_cols"])
    assert assert_means_match(tiff_slide, sample, -1, kernel, 3.0) <= 3.0


def test_same_output_for_any_number_of_workers(make_slide, tmp_path):
    slide = make_slide(613, 457)
    outputs = []
    for workers in (1, 2, 4):
        out = tmp_path / f"w{workers}" / "windows.csv"
        assert (
            infer(
                slide,
                out,
                32,
                24,
                "--min-tissue",
                "0",
                "--workers",
                str(workers),
                "--chunk-px",
                "120",
                "--batch-size",
                "7",
            )
            == 0
        )
        outputs.append(out.read_bytes())
    rows = read_table(tmp_path / "w1" / "windows.csv")[1]
    assert len(rows) == conv2d_len(613, 32, 24) * conv2d_len(457, 32, 24)
    grid = Grid(613, 457, 32, 24, "valid", 1.0)
    assert len(plan_chunks(grid, 120)) > 8  # many chunks, each split into batches
    assert outputs[0] == outputs[1] == outputs[2]


# --------------------------------------------------------------------------- kill and resume

KILL_ARGS = (
    "--min-tissue",
    "0",
    "--collector",
    SLOW_COLLECTOR,
    "--chunk-px",
    "192",
    "--batch-size",
    "4",
    "--workers",
    "1",
)
KILL_KERNEL = KILL_STRIDE = 64


@dataclass(frozen=True)
class KilledRun:
    """A run killed mid-way: its ``--out`` and a copy of the checkpoint it left behind."""

    out: Path
    saved: Path

    def restore(self) -> None:
        """Put the output path back in the state the kill left it in."""
        shutil.rmtree(partial_dir(self.out), ignore_errors=True)
        self.out.unlink(missing_ok=True)
        self.out.with_suffix(".json").unlink(missing_ok=True)
        shutil.copytree(self.saved, partial_dir(self.out))


@pytest.fixture(scope="module")
def killed_run(tiff_slide, tmp_path_factory) -> KilledRun:
    """SIGKILL a slow ``python -m wsiproc infer`` (engine, loaders and writer) once two chunks
    are checkpointed; keep a copy of the checkpoint directory it left."""
    work = tmp_path_factory.mktemp("killed")
    out = work / "windows.csv"
    cmd = [
        sys.executable,
        "-m",
        "wsiproc",
        "infer",
        str(tiff_slide),
        "--out",
        str(out),
        "--kernel-size",
        str(KILL_KERNEL),
        "--stride",
        str(KILL_STRIDE),
        "--quiet",
        "--device",
        "cpu",
        *KILL_ARGS,
    ]
    env = {**os.environ, "WSIPROC_TEST_SLEEP": "0.05"}
    proc = kill_after_two_checkpoints(cmd, out, 60, env)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not out.with_suffix(".json").exists()
    saved = work / "saved.partial"
    shutil.copytree(partial_dir(out), saved)
    return KilledRun(out, saved)


def test_rerun_after_kill_resumes_and_is_byte_identical(
    tiff_slide, killed_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("WSIPROC_TEST_SLEEP", "0")  # not in the fingerprint: still resumes
    # Complete index lines (a line torn by the kill has no newline yet).
    done_lines = (killed_run.saved / INDEX_FILE).read_bytes().split(b"\n")[:-1]
    assert len(done_lines) >= 2
    checkpointed = sum(int(line.split()[2]) for line in done_lines)

    killed_run.restore()
    out = killed_run.out
    assert infer(tiff_slide, out, KILL_KERNEL, KILL_STRIDE, *KILL_ARGS) == 0
    meta = read_meta(out)
    total = meta["windows_total"]
    assert 0 < meta["resumed_windows"] < total
    assert meta["resumed_windows"] == checkpointed  # every fsynced chunk reused, none redone
    assert not partial_dir(out).exists()

    fresh = tmp_path / "fresh" / "windows.csv"
    assert infer(tiff_slide, fresh, KILL_KERNEL, KILL_STRIDE, *KILL_ARGS) == 0
    assert read_meta(fresh)["resumed_windows"] == 0
    assert out.read_bytes() == fresh.read_bytes()
    _, rows = read_table(out)
    assert cells(rows) == [
        (r, c) for r in range(meta["grid_rows"]) for c in range(meta["grid_cols"])
    ]  # none lost, none twice
    assert meta["windows_processed"] == total == len(rows)


def test_changed_command_does_not_resume_stale_checkpoint(
    tiff_slide, killed_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("WSIPROC_TEST_SLEEP", "0")
    killed_run.restore()
    out = killed_run.out
    stride = KILL_STRIDE - 16
    assert infer(tiff_slide, out, KILL_KERNEL, stride, *KILL_ARGS) == 0
    meta = read_meta(out)
    assert meta["resumed_windows"] == 0 and meta["stride"] == stride
    fresh = tmp_path / "fresh" / "windows.csv"
    assert infer(tiff_slide, fresh, KILL_KERNEL, stride, *KILL_ARGS) == 0
    assert out.read_bytes() == fresh.read_bytes()
    _, rows = read_table(out)
    assert len(rows) == conv2d_len(1107, 64, stride) * conv2d_len(1531, 64, stride)


def test_rerun_with_another_reader_starts_afresh(tiff_slide, killed_run, monkeypatch):
    """The fingerprint holds the reader actually used: a resumed run never mixes readers."""
    monkeypatch.setenv("WSIPROC_TEST_SLEEP", "0")
    killed_run.restore()
    run = json.loads((partial_dir(killed_run.out) / "run.json").read_text())
    assert run["reader"] == "pyvips" and run["device"] == "collector"
    out = killed_run.out
    assert (
        infer(tiff_slide, out, KILL_KERNEL, KILL_STRIDE, *KILL_ARGS, "--reader", "openslide") == 0
    )
    meta = read_meta(out)
    assert meta["resumed_windows"] == 0 and meta["reader"] == "openslide"


def test_checkpoint_drops_torn_tail_and_resets_on_new_fingerprint(tmp_path):
    directory = tmp_path / "w.csv.partial"
    ckpt = Checkpoint(directory, {"run": 1}, width=2)
    for chunk in range(3):
        rows = np.arange(4, dtype=np.int32) + chunk
        ckpt.append(chunk, rows, rows, np.full((4, 2), chunk, dtype=np.float32))
    with open(directory / INDEX_FILE, "ab") as fh:
        fh.write(b"3 999")  # a torn line: the process died while writing it
    with open(directory / "spool.bin", "ab") as fh:
        fh.write(b"\x00" * 17)  # and spool bytes without an index line
    again = Checkpoint(directory, {"run": 1}, width=2)
    assert sorted(again.done) == [0, 1, 2]
    rows, cols, values = again.read(2)
    assert rows.tolist() == [2, 3, 4, 5] and values.tolist() == [[2.0, 2.0]] * 4
    assert (directory / "spool.bin").stat().st_size == 3 * again.record_bytes(4)
    assert (directory / INDEX_FILE).read_bytes().count(b"\n") == 3
    fresh = Checkpoint(directory, {"run": 2}, width=2)
    assert fresh.done == {}
    (directory / "run.json").write_text("{garbage")  # a damaged fingerprint: never trusted
    assert Checkpoint(directory, {"run": 2}, width=2).done == {}
    damaged = Checkpoint(directory, {"run": 2}, width=2)
    damaged.append(0, np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32),
                   np.zeros((4, 2), dtype=np.float32))  # fmt: skip
    (directory / INDEX_FILE).write_bytes(b"0 0 99\n")  # an index line past the spool's end
    assert Checkpoint(directory, {"run": 2}, width=2).done == {}


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("reader", ["auto", "openslide"])
def test_corrupt_tile_fails_with_region_and_keeps_finished_chunks(
    corrupt_slide, tmp_path, capsys, reader
):
    path, (tx, ty, tw, th) = corrupt_slide
    out = tmp_path / "windows.csv"
    rc = infer(
        path,
        out,
        128,
        128,
        "--min-tissue",
        "0",
        "--chunk-px",
        "512",
        "--workers",
        "1",
        "--reader",
        reader,
    )
    assert rc != 0
    line = error_line(capsys)
    assert str(path) in line and "region" in line
    assert not out.exists() and not out.with_suffix(".json").exists()
    # Chunks finished before the failing one stay checkpointed for a rerun. With one loader,
    # chunks are read in order, so these are exactly the chunks before the first one that
    # touches the corrupt tile.
    grid = Grid(2048, 2048, 128, 128, "valid", 1.0)
    chunks = plan_chunks(grid, 512)

    def touches(chunk) -> bool:
        x, y, w, h = chunk.proc_box(grid)
        return x < tx + tw and tx < x + w and y < ty + th and ty < y + h

    first_bad = next(c.index for c in chunks if touches(c))
    # Checkpoints are per group of consecutive chunks (the batching unit): the groups done are
    # exactly those made only of chunks before the first bad one.
    groups = plan_groups(chunks, np.ones((grid.rows, grid.cols), dtype=bool), 32)
    expected = [g.index for g in groups if all(t.chunk.index < first_bad for t in g.chunks)]
    assert expected, "the corrupt tile should come after at least one whole group"
    done = (partial_dir(out) / INDEX_FILE).read_bytes().splitlines()
    assert sorted(int(entry.split()[0]) for entry in done) == expected
    if reader == "openslide":
        # The decoder's whole reason survives the trip from the loader process
        # (OpenSlide says "Not a JPEG file: starts with 0x00 0x00").
        assert "Not a JPEG file" in line, line


def test_missing_slide_is_one_error_line(tmp_path, capsys):
    slide = tmp_path / "absent.svs"
    out = tmp_path / "windows.csv"
    assert infer(slide, out, 64, 64) == 1
    assert str(slide) in error_line(capsys)
    assert not out.exists() and not partial_dir(out).exists()


def test_not_a_slide_is_one_error_line(not_a_slide, tmp_path, capsys):
    out = tmp_path / "windows.csv"
    assert infer(not_a_slide, out, 64, 64) == 1
    assert str(not_a_slide) in error_line(capsys)
    assert not out.exists()


def test_bad_min_tissue_names_the_option(tiff_slide, tmp_path, capsys):
    out = tmp_path / "windows.csv"
    assert infer(tiff_slide, out, 64, 64, "--min-tissue", "2") == 1
    assert "min-tissue" in error_line(capsys)
    assert not out.exists() and not partial_dir(out).exists()


def test_unknown_builtin_model_names_the_model(tiff_slide, tmp_path, capsys):
    out = tmp_path / "windows.csv"
    assert infer(tiff_slide, out, 64, 64, "--model", "builtin:nope") == 1
    line = error_line(capsys)
    assert "builtin:nope" in line and "builtin:mean-rgb" in line
    assert not out.exists() and not partial_dir(out).exists()


def test_torchscript_path_that_is_not_a_model(tiff_slide, tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_text("not a model\n")
    out = tmp_path / "windows.csv"
    assert infer(tiff_slide, out, 64, 64, "--model", str(model)) == 1
    assert str(model) in error_line(capsys)
    assert not out.exists() and not partial_dir(out).exists()


# --------------------------------------------------------------------------- tissue


def test_glass_slide_has_no_tissue_windows(make_slide, tmp_path):
    slide = make_slide(420, 330, tissue=False)
    out = tmp_path / "default" / "windows.csv"
    assert infer(slide, out, 64, 64) == 0
    header, rows = read_table(out)
    assert rows == [] and header == [*META_COLUMNS, *MEAN_RGB]
    meta = read_meta(out)
    assert meta["windows_processed"] == 0
    assert meta["windows_skipped"] == meta["windows_total"] == 6 * 5
    everything = tmp_path / "all" / "windows.csv"
    assert infer(slide, everything, 64, 64, "--min-tissue", "0") == 0
    _, rows = read_table(everything)
    assert cells(rows) == [(r, c) for r in range(5) for c in range(6)]
    assert all(float(r["tissue"]) == 0.0 for r in rows)  # measured, though nothing is gated
    assert read_meta(everything)["tissue_unknown"] is False


# --------------------------------------------------------------------------- models


def save_torchscript(tmp_path: Path, name: str, spatial: bool) -> Path:
    """A tiny conv net saved as TorchScript with a preprocessing sidecar."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self, out_size: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(out_size)
            self.spatial = out_size > 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pool(self.conv(x))
            return y if self.spatial else y.flatten(1)

    torch.manual_seed(0)
    net = Net(2 if spatial else 1).eval()
    path = tmp_path / name
    torch.jit.script(net).save(str(path))
    sidecar = {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "activation": "softmax",
        "output_names": ["a", "b"],
    }
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


def test_torchscript_model_outputs_softmax_columns(make_slide, tmp_path):
    torch = pytest.importorskip("torch")
    slide = make_slide(613, 457)
    model = save_torchscript(tmp_path, "model.pt", spatial=False)
    out = tmp_path / "windows.csv"
    kernel = 48
    assert infer(slide, out, kernel, kernel, "--model", str(model), "--workers", "1") == 0
    header, rows = read_table(out)
    assert header == [*META_COLUMNS, "a", "b"]
    meta = read_meta(out)
    assert meta["outputs"] == ["a", "b"] and meta["output_shape"] == [2]
    assert meta["model"] == str(model)
    # Default min-tissue 0.25: only tissue windows, but some.
    assert 0 < len(rows) < meta["windows_total"]
    assert all(float(r["tissue"]) >= 0.25 for r in rows)
    for r in rows:
        assert float(r["a"]) + float(r["b"]) == pytest.approx(1.0, abs=2e-6)
    # Independent forward pass on an OpenSlide read of a few windows.
    net = torch.jit.load(str(model)).eval()
    osr = openslide.OpenSlide(str(slide))
    try:
        for r in rows[:: max(1, len(rows) // 5)]:
            pixels = openslide_window(osr, r, 0, kernel)
            x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
            with torch.no_grad():
                probs = torch.softmax(net((x - 0.5) / 0.25), dim=1)[0].numpy()
            assert [float(r["a"]), float(r["b"])] == pytest.approx(probs.tolist(), abs=1e-4)
    finally:
        osr.close()


def test_fully_convolutional_model_gets_spatial_columns(make_slide, tmp_path):
    slide = make_slide(613, 457)
    model = save_torchscript(tmp_path, "fcn.pt", spatial=True)
    out = tmp_path / "windows.csv"
    assert (
        infer(slide, out, 48, 48, "--model", str(model), "--min-tissue", "0", "--workers", "1") == 0
    )
    header, rows = read_table(out)
    names = [f"{c}_{i}_{j}" for c in "ab" for i in range(2) for j in range(2)]
    assert header == [*META_COLUMNS, *names]
    meta = read_meta(out)
    assert meta["output_shape"] == [2, 2, 2] and meta["output_names"] == ["a", "b"]
    assert len(rows) == (457 // 48) * (613 // 48)
    for r in rows:
        for i in range(2):
            for j in range(2):
                total = float(r[f"a_{i}_{j}"]) + float(r[f"b_{i}_{j}"])
                assert total == pytest.approx(1.0, abs=2e-6)


# --------------------------------------------------------------------------- collectors


@pytest.fixture
def stop_early(monkeypatch):
    """The ``StopEarly`` class as ``--collector _slow_collector:StopEarly`` will load it."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    module = importlib.import_module("_slow_collector")
    monkeypatch.setattr(module.StopEarly, "LIMIT", 20)
    return module.StopEarly


def test_collector_that_stops_early_writes_exactly_what_it_processed(
    make_slide, tmp_path, stop_early
):
    """StreamCollector.is_finished: only windows *not yet processed* are left out."""
    slide = make_slide(613, 457)
    out = tmp_path / "windows.csv"
    # 4x4-window chunks, batches of 8: the collector stops after 24 windows (1.5 chunks).
    assert (
        infer(
            slide,
            out,
            32,
            32,
            "--min-tissue",
            "0",
            "--collector",
            "_slow_collector:StopEarly",
            "--chunk-px",
            "128",
            "--batch-size",
            "8",
            "--workers",
            "1",
        )
        == 0
    )
    header, rows = read_table(out)
    assert header == [*META_COLUMNS, "red", "green"]
    processed = set(stop_early.processed)
    assert len(processed) == len(stop_early.processed) == 24
    assert stop_early.info is not None and stop_early.info.grid_cols == 613 // 32
    written = cells(rows)
    assert written == sorted(set(written))
    assert set(written) <= processed
    lost = sorted(processed - set(written))
    assert not lost, f"{len(lost)} of {len(processed)} processed windows not written: {lost}"
    assert set(written) == processed
    assert 0 < len(written) < (613 // 32) * (457 // 32)
    meta = read_meta(out)
    assert meta["outputs"] == ["red", "green"]
    assert meta["windows_processed"] == len(rows)
    assert not partial_dir(out).exists()
    assert read_meta(out)["windows_processed"] == len(processed)


def test_torch_export_program_gives_the_same_outputs_as_torchscript(make_slide, tmp_path):
    """A ``.pt2`` program (torch.export, TorchScript's successor) runs like the TorchScript file."""
    torch = pytest.importorskip("torch")
    slide = make_slide(401, 337)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 5, stride=4)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    net = Net().eval()
    example = torch.rand(4, 3, 48, 48)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    pt2 = tmp_path / "net.pt2"
    torch.export.save(program, str(pt2))
    ts = tmp_path / "net.pt"
    torch.jit.trace(net, example).save(str(ts))
    outs = {}
    for path in (pt2, ts):
        out = tmp_path / f"{path.suffix[1:]}.csv"
        assert infer(slide, out, 48, 48, "--model", str(path), "--min-tissue", "0") == 0
        outs[path.suffix] = read_table(out)[1]
    assert len(outs[".pt2"]) == len(outs[".pt"]) > 0
    for a, b in zip(outs[".pt2"], outs[".pt"], strict=True):
        assert (a["row"], a["col"]) == (b["row"], b["col"])
        assert float(a["out_0"]) == pytest.approx(float(b["out_0"]), abs=1e-4)
        assert float(a["out_1"]) == pytest.approx(float(b["out_1"]), abs=1e-4)


def test_sigterm_stops_in_order_without_leftovers(tiff_slide, tmp_path):
    """Snakemake cancelling a job (SIGTERM): one error line, exit 1, checkpoint kept, and no
    loader, writer or shared-memory file left behind."""
    out = tmp_path / "windows.csv"
    cmd = [sys.executable, "-m", "wsiproc", "infer", str(tiff_slide), "--out", str(out),
           "--kernel-size", str(KILL_KERNEL), "--stride", str(KILL_STRIDE), "--quiet",
           "--device", "cpu", *KILL_ARGS]  # fmt: skip
    env = {**os.environ, "WSIPROC_TEST_SLEEP": "0.05"}
    proc = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    index = partial_dir(out) / INDEX_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if index.exists() and index.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "run ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)  # the engine only, as Snakemake does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "SIGTERM" in lines[0]
    assert not out.exists() and index.read_bytes().count(b"\n") >= 1
    import psutil

    deadline = time.monotonic() + 10
    left = ["?"]
    while time.monotonic() < deadline and left:
        left = [
            p.pid
            for p in psutil.process_iter(["status"])
            if _pgid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"
    assert not list(Path("/dev/shm").glob(f"wsiproc-{proc.pid}-*.slots"))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _with_mpp(model: Path, mpp: float, input_size: int | None = None) -> Path:
    side = model.with_name(model.name + ".json")
    sidecar = json.loads(side.read_text())
    sidecar["mpp"] = mpp
    if input_size is not None:
        sidecar["input_size"] = input_size
    side.write_text(json.dumps(sidecar))
    return model


def test_model_declared_mpp_sets_the_resolution_and_a_mismatch_is_refused(
    tiff_slide, tmp_path, capsys
):
    """tiff_slide is 0.5 µm/px; the model says it was trained at 1.0 µm/px."""
    model = _with_mpp(save_torchscript(tmp_path, "m.pt", spatial=False), 1.0, input_size=32)
    out = tmp_path / "windows.csv"
    assert infer(tiff_slide, out, 64, 64, "--model", str(model), "--workers", "1") == 0
    meta = read_meta(out)
    assert meta["proc_mpp"] == pytest.approx(1.0, rel=0.01) and meta["model_mpp"] == 1.0
    assert meta["model_input_size"] == 32 and meta["kernel_size"] == 64
    capsys.readouterr()

    refused = tmp_path / "refused.csv"
    assert infer(tiff_slide, refused, 64, 64, "--model", str(model), "--mpp", "0.5") == 1
    line = error_line(capsys)
    assert "trained at 1 µm/px" in line and "processed at 0.5 µm/px" in line
    assert str(tiff_slide) in line and "--allow-mpp-mismatch" in line
    assert not partial_dir(refused).exists()  # refused before any work

    args = ("--model", str(model), "--mpp", "0.5", "--allow-mpp-mismatch", "--workers", "1")
    assert infer(tiff_slide, refused, 64, 64, *args) == 0
    assert read_meta(refused)["proc_mpp"] == pytest.approx(0.5)
