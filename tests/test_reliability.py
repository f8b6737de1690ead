"""Faults injected for real into ``wsiproc infer`` and the stages after it.

Every test starts real processes (``python -m wsiproc``), kills them with real signals, mounts
real tmpfs file systems in a private mount namespace, or reads real corrupt tiles; each one
fails when the protection it checks is removed. ``docs/reliability.md`` lists them by fault.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide
import psutil
import pytest

from wsiproc import synth
from wsiproc.stream.checkpoint import INDEX_FILE
from wsiproc.stream.engine import partial_dir
from wsiproc.stream.lock import lock_path

TESTS_DIR = Path(__file__).resolve().parent
COLLECTORS = TESTS_DIR / "_slow_collector.py"
SLOW_ARGS = (
    "--kernel-size", "64", "--stride", "64", "--min-tissue", "0",
    "--collector", f"{COLLECTORS}:SlowMeanRGB",
    "--chunk-px", "192", "--batch-size", "4", "--workers", "2", "--device", "cpu",
)  # fmt: skip


def wsiproc_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "wsiproc", *map(str, args)]


def run(
    *args: object, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m wsiproc ARGS`` to completion."""
    return subprocess.run(
        wsiproc_cmd(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def default_sigint() -> None:
    """In the child: SIGINT as in a terminal's foreground job. A test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and so would wsiproc."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: object, sleep: float = 0.05) -> subprocess.Popen:
    """A slow ``python -m wsiproc ARGS`` in its own process group."""
    return subprocess.Popen(
        wsiproc_cmd(*args),
        env={**os.environ, "WSIPROC_TEST_SLEEP": str(sleep)},
        start_new_session=True,
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_groups(proc: subprocess.Popen, out: Path, n: int, timeout: float = 60) -> None:
    """Until ``n`` groups are checkpointed (the run is well under way)."""
    index = partial_dir(out) / INDEX_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if index.exists() and index.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {n} groups checkpointed before the run ended: {proc.communicate()}")


def one_error_line(stderr: str, path: Path | str) -> str:
    """The only line of ``stderr``: ``error: <path>: ...``, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ killed processes


def _children(proc: subprocess.Popen, slide: Path) -> tuple[list[psutil.Process], list]:
    """(loaders, writers) of a running engine: loaders hold the slide open, the writer not."""
    loaders, others = [], []
    for child in psutil.Process(proc.pid).children():
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
            files = {f.path for f in child.open_files()}
        except psutil.NoSuchProcess:
            continue
        (loaders if str(slide) in files else others).append(child)
    return loaders, others


@pytest.mark.parametrize("victim", ["loader", "writer"])
def test_killed_loader_or_writer_fails_fast_and_rerun_is_byte_identical(
    tiff_slide, tmp_path, victim
):
    out = tmp_path / "windows.csv"
    proc = start("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    try:
        wait_for_groups(proc, out, 1)
        loaders, writers = _children(proc, tiff_slide)
        assert len(loaders) == 2 and len(writers) == 1, (loaders, writers)
        target = loaders[0] if victim == "loader" else writers[0]
        killed_at = time.monotonic()
        target.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1
    assert took < 10, f"the engine needed {took:.1f} s to notice"
    line = one_error_line(err, tiff_slide if victim == "loader" else out)
    assert "SIGKILL" in line and victim in line
    assert not out.exists()
    assert (partial_dir(out) / INDEX_FILE).read_bytes().count(b"\n") >= 1

    resumed = run("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(out.with_suffix(".json").read_text())["resumed_windows"] > 0
    fresh = tmp_path / "fresh" / "windows.csv"
    assert run("infer", tiff_slide, "--out", fresh, "--quiet", *SLOW_ARGS).returncode == 0
    assert out.read_bytes() == fresh.read_bytes()


def test_killed_main_process_leaves_no_orphans_and_rerun_resumes(tiff_slide, tmp_path):
    """Only the engine's own process dies (the OOM killer picks the largest): its loaders and
    writer notice that their parent is gone and exit."""
    out = tmp_path / "windows.csv"
    proc = start("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    try:
        wait_for_groups(proc, out, 1)
        children = psutil.Process(proc.pid).children()
        assert len(children) >= 3  # two loaders and the writer
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {alive}"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists()
    resumed = run("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(out.with_suffix(".json").read_text())["resumed_windows"] > 0


def test_ctrl_c_stops_every_process_keeps_the_checkpoint_and_the_rerun_resumes(
    tiff_slide, tmp_path
):
    """Ctrl-C in a terminal sends SIGINT to the whole process group."""
    out = tmp_path / "windows.csv"
    proc = start("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    try:
        wait_for_groups(proc, out, 1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130
    assert err.strip() == "error: interrupted"
    assert not out.exists() and (partial_dir(out) / INDEX_FILE).stat().st_size > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.1)
    assert not _group_alive(proc.pid), "loader or writer processes left behind"
    assert not list(Path("/dev/shm").glob(f"wsiproc-{proc.pid}-*.slots"))
    resumed = run("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(out.with_suffix(".json").read_text())["resumed_windows"] > 0


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of process group ``pgid`` is left."""
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


# ------------------------------------------------------------------ one writer per output


def test_second_run_on_the_same_output_is_refused_at_once_and_a_killed_lock_never_blocks(
    tiff_slide, tmp_path
):
    out = tmp_path / "windows.csv"
    first = start("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
    try:
        wait_for_groups(first, out, 1)
        t0 = time.monotonic()
        second = run("infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS)
        took = time.monotonic() - t0
        assert first.poll() is None, "the first run must still be running"
        line = one_error_line(second.stderr, out)
        assert f"another wsiproc infer is writing it (pid {first.pid} on host " in line
        assert second.returncode == 1
        # Python start-up and imports included; the refusal itself comes before any work.
        assert took < 1.5, f"refused only after {took:.2f} s"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # leaves its lock file behind
        first.communicate()
    assert lock_path(out).exists()
    after = run(
        "infer", tiff_slide, "--out", out, "--quiet", *SLOW_ARGS, env={"WSIPROC_TEST_SLEEP": "0"}
    )
    assert after.returncode == 0, after.stderr
    assert out.exists() and not lock_path(out).exists()


def test_temp_files_of_killed_runs_are_removed(tiff_slide, tmp_path):
    out = tmp_path / "windows.csv"
    stale = [tmp_path / ".windows.csv.tmp-999999", tmp_path / ".windows.json.tmp-999999"]
    for path in stale:
        path.write_text("half-written by a killed run")
    args = ("--kernel-size", "256", "--stride", "256", "--model", "builtin:mean-rgb")
    assert run("infer", tiff_slide, "--out", out, "--quiet", *args).returncode == 0
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["windows.csv", "windows.json"]


# ------------------------------------------------------------------ shared memory


def _in_private_mounts(script: str, env: dict) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (``unshare -m``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a private /dev/shm")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m refused here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


SHM_ARGS = ("--kernel-size", "224", "--stride", "224", "--batch-size", "64", "--workers", "2",
            "--min-tissue", "0", "--model", "builtin:mean-rgb")  # fmt: skip
"""5 slots of 64 windows of 224 px: a 46 MiB slot pool, far more than 2 MB."""


def test_small_dev_shm_falls_back_to_a_file_and_says_so(tiff_slide, tmp_path):
    out = tmp_path / "windows.csv"
    reference = tmp_path / "ref" / "windows.csv"
    assert run("infer", tiff_slide, "--out", reference, "--quiet", *SHM_ARGS).returncode == 0
    cmd = " ".join(wsiproc_cmd("infer", tiff_slide, "--out", out, "--quiet", *SHM_ARGS))
    proc = _in_private_mounts(
        f"mount -t tmpfs -o size=2m tmpfs /dev/shm && exec {cmd}", {"TMPDIR": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "/dev/shm has" in warning[0], proc.stderr
    assert "the slot pool needs 46 MB" in warning[0] and str(tmp_path) in warning[0]
    assert out.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.glob("wsiproc-*.slots"))


def test_no_room_for_the_slot_pool_is_one_error_line_not_sigbus(tiff_slide, tmp_path):
    out = tmp_path / "windows.csv"
    small_tmp = tmp_path / "tmp"
    small_tmp.mkdir()
    cmd = " ".join(wsiproc_cmd("infer", tiff_slide, "--out", out, "--quiet", *SHM_ARGS))
    proc = _in_private_mounts(
        f"mount -t tmpfs -o size=2m tmpfs /dev/shm && "
        f"mount -t tmpfs -o size=2m tmpfs {small_tmp} && exec {cmd}",
        {"TMPDIR": str(small_tmp)},
    )
    assert proc.returncode == 1
    line = one_error_line(proc.stderr, "/dev/shm")
    assert "the slot pool needs 46 MB" in line and "--batch-size" in line and "--shm-size" in line
    assert "SIGBUS" not in line and not out.exists()


# ------------------------------------------------------------------ unreadable regions


@pytest.fixture
def corrupt_run(corrupt_slide, tmp_path):
    """``infer --on-read-error skip`` over the slide with a zeroed tile; (slide, box, out)."""
    path, box = corrupt_slide
    out = tmp_path / "windows.csv"
    proc = run(
        "infer", path, "--out", out, "--kernel-size", "128", "--stride", "128",
        "--min-tissue", "0", "--chunk-px", "512", "--workers", "2", "--level", "0",
        "--model", "builtin:mean-rgb", "--on-read-error", "skip", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return path, box, out, proc.stderr


def test_skip_gives_every_window_a_row_and_nan_exactly_where_unreadable(corrupt_run):
    path, (tx, ty, tw, th), out, stderr = corrupt_run
    rows = read_rows(out)
    assert len(rows) == 16 * 16  # 2048 / 128 squared: every window, once
    assert len({(r["row"], r["col"]) for r in rows}) == len(rows)
    unreadable = set()
    for r in rows:
        x, y = int(r["x"]), int(r["y"])
        touches = x < tx + tw and tx < x + 128 and y < ty + th and ty < y + 128
        values = [float(r[k]) for k in ("mean_r", "mean_g", "mean_b")]
        if touches:
            assert all(math.isnan(v) for v in values), r
            unreadable.add((r["row"], r["col"]))
        else:
            assert not any(math.isnan(v) for v in values), r
    assert unreadable
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["read_errors"]["windows"] == len(unreadable)
    regions = record["read_errors"]["regions"]
    assert len(regions) == len(unreadable)
    assert all(r["level"] == 0 and "corrupt or truncated tile" in r["problem"] for r in regions)
    assert f"{len(unreadable)} windows could not be read" in stderr


def test_qc_flags_read_errors_with_their_count(corrupt_run, tmp_path):
    path, _, out, _ = corrupt_run
    level = tmp_path / "level.json"
    assert (
        run(
            "level",
            path,
            "--out",
            level,
            "--level",
            "0",
            "--thumbnail",
            tmp_path / "t.png",
            "--mask",
            tmp_path / "m.png",
        ).returncode
        == 0
    )
    qc = tmp_path / "qc.json"
    proc = run("qc", path, "--level-json", level, "--windows", out, "--out", qc,
               "--html", tmp_path / "qc.html")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(qc.read_text())
    n = json.loads(out.with_suffix(".json").read_text())["read_errors"]["windows"]
    assert "read_errors" in record["flags"] and record["read_error_windows"] == n > 0


def test_fail_is_the_default_and_names_file_cause_and_region(corrupt_slide, tmp_path):
    path, _ = corrupt_slide
    out = tmp_path / "windows.csv"
    proc = run(
        "infer",
        path,
        "--out",
        out,
        "--kernel-size",
        "128",
        "--stride",
        "128",
        "--min-tissue",
        "0",
        "--level",
        "0",
        "--model",
        "builtin:mean-rgb",
        "--quiet",
    )
    assert proc.returncode == 1
    line = one_error_line(proc.stderr, path)
    assert "corrupt or truncated tile (" in line and "(level 0, region " in line
    assert "level=-1" not in line and "write to memory" not in line


def test_corrupt_thumbnail_level_is_one_line_without_internal_values(tmp_path):
    path = synth.write_pyramidal_tiff(
        tmp_path / "thumb_corrupt.tif", synth.tissue_image(2048, 2048, seed=5), mpp=0.5
    )
    with openslide.OpenSlide(path) as osr:
        levels = osr.level_count
    for level in range(levels):  # whichever level the thumbnail is made from
        synth.corrupt_tile(path, level=level, tile_index=0)
    proc = run("level", path, "--out", tmp_path / "level.json", "--level", "0",
               "--thumbnail", tmp_path / "t.png", "--mask", tmp_path / "m.png")  # fmt: skip
    assert proc.returncode == 1
    line = one_error_line(proc.stderr, path)
    assert "cannot make the thumbnail: corrupt or truncated tile" in line
    assert "level=-1" not in line and "write to memory" not in line


@pytest.mark.parametrize("fixture", ["zero_byte_slide", "not_a_slide", "truncated_slide"])
@pytest.mark.parametrize("stage", ["level", "infer"])
def test_bad_slide_file_is_one_line_naming_it(request, fixture, stage, tmp_path):
    path = request.getfixturevalue(fixture)
    if stage == "level":
        proc = run("level", path, "--out", tmp_path / "level.json", "--level", "0")
    else:
        proc = run("infer", path, "--out", tmp_path / "w.csv", "--kernel-size", "64",
                   "--stride", "64", "--quiet")  # fmt: skip
    assert proc.returncode == 1
    one_error_line(proc.stderr, path)


def test_directory_as_slide_is_one_line(tmp_path):
    folder = tmp_path / "slide.svs"
    folder.mkdir()
    proc = run("infer", folder, "--out", tmp_path / "w.csv", "--kernel-size", "64",
               "--stride", "64", "--quiet")  # fmt: skip
    assert "is a directory" in one_error_line(proc.stderr, folder)


# ------------------------------------------------------------------ zero windows


@pytest.mark.parametrize(("size", "tissue"), [((150, 120), True), ((900, 700), False)])
def test_zero_windows_is_a_result_every_later_stage_handles(tmp_path, size, tissue):
    """A slide smaller than one window, and a glass slide: header-only CSV, TIFFs that open,
    QC flagged ``no_windows``."""
    width, height = size
    slide = synth.write_pyramidal_tiff(
        tmp_path / "small.tif", synth.tissue_image(width, height, seed=3, tissue=tissue), mpp=0.5
    )
    d = tmp_path / "out"
    proc = run("infer", slide, "--out", d / "windows.csv", "--kernel-size", "224",
               "--stride", "224", "--level", "0", "--model", "builtin:stain")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no window to process" in proc.stderr
    assert (d / "windows.csv").read_text().count("\n") == 1  # the header only
    proc = run("heatmap", d / "windows.csv", "--out", d / "heatmap.tif",
               "--rgb-out", d / "heatmap_rgb.tif", "--geojson", d / "windows.geojson")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((d / "windows.json").read_text())
    assert record["windows_processed"] == 0
    # The grid's raster (one transparent pixel when the grid itself is empty).
    size = (max(1, record["grid_cols"]), max(1, record["grid_rows"]))
    assert (record["grid_rows"] == 0) == (width < 224)
    with openslide.OpenSlide(d / "heatmap_rgb.tif") as osr:
        assert osr.dimensions == size
        assert (np.asarray(osr.read_region((0, 0), 0, size))[..., 3] == 0).all()
    assert json.loads((d / "windows.geojson").read_text())["features"] == []
    assert run("level", slide, "--out", d / "level.json", "--level", "0",
               "--thumbnail", d / "t.png", "--mask", d / "m.png").returncode == 0  # fmt: skip
    proc = run("qc", slide, "--level-json", d / "level.json", "--windows", d / "windows.csv",
               "--out", d / "qc.json", "--html", d / "qc.html")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no_windows" in json.loads((d / "qc.json").read_text())["flags"]


# ------------------------------------------------------------------ resume that cannot mix


def test_collector_reusing_its_output_buffer_gets_every_row_right(tiff_slide, tmp_path):
    common = ("--kernel-size", "32", "--stride", "32", "--min-tissue", "0", "--batch-size",
              "2", "--chunk-px", "128", "--workers", "2", "--quiet")  # fmt: skip
    reused, fresh = tmp_path / "reused.csv", tmp_path / "fresh.csv"
    assert run("infer", tiff_slide, "--out", reused, "--collector",
               f"{COLLECTORS}:ReusedBuffer", *common).returncode == 0  # fmt: skip
    assert (
        run(
            "infer",
            tiff_slide,
            "--out",
            fresh,
            "--collector",
            f"{COLLECTORS}:SlowMeanRGB",
            *common,
            env={"WSIPROC_TEST_SLEEP": "0"},
        ).returncode
        == 0
    )
    assert reused.read_bytes() == fresh.read_bytes()
