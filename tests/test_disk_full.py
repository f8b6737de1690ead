"""A full disk: one clear error naming the file, and nothing already done is lost.

Needs a tiny tmpfs, so root and mount permission; skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsiproc import synth
from wsiproc.stream.checkpoint import INDEX_FILE
from wsiproc.stream.engine import partial_dir


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt, "24k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def _infer(slide: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "wsiproc",
        "infer",
        str(slide),
        "--out",
        str(out),
        "--kernel-size",
        "32",
        "--stride",
        "32",
        "--min-tissue",
        "0",
        "--chunk-px",
        "256",
        "--model",
        "builtin:mean-rgb",
        "--workers",
        "1",
        "--quiet",
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_full_disk_fails_with_one_line_naming_the_file_and_resumes_once_space_is_back(
    tiny_disk, tmp_path
):
    image = synth.tissue_image(960, 960, seed=3)
    slide = synth.write_pyramidal_tiff(tmp_path / "s.tif", image, mpp=0.5)
    out = tiny_disk / "windows.csv"
    failed = _infer(slide, out)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(tiny_disk) in lines[0] and "no space left on device" in lines[0]
    assert not out.exists() and not out.with_suffix(".json").exists()
    done_before = (partial_dir(out) / INDEX_FILE).read_text().splitlines()
    assert done_before, "some groups fitted on the disk and stay checkpointed"

    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)
    ok = _infer(slide, out)
    assert ok.returncode == 0, ok.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["resumed_windows"] > 0  # continued, did not start over
    reference = _infer(slide, tmp_path / "ref.csv")
    assert reference.returncode == 0
    assert out.read_bytes() == (tmp_path / "ref.csv").read_bytes()
