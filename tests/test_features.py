"""``wsiproc features`` end to end on generated slides (issue 15).

Runs go through ``wsiproc.cli.main`` in-process, except the kill test. The file is read back
with a reader written from TRIDENT's layout (h5py only); coordinates and tissue are checked
against ``wsiproc infer``'s CSV for the same grid, embeddings against the encoder run on an
independent OpenSlide read of each patch.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
from _encoders import MeanColour, Slow, seeded, sidecar, write_encoder
from _kill import kill_after_two_checkpoints

from wsiproc import synth
from wsiproc.cli import main
from wsiproc.features.encoder import Encoder
from wsiproc.precision import resolve_precision
from wsiproc.stream.engine import partial_dir

COORDS_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "level0_width",
    "level0_height",
    "patch_level",
    "mpp_level0",
    "target_mpp",
    "tile_size_um",
)


def read_trident(path: Path) -> dict:
    """What TRIDENT's slide encoders read: features (N, D), coords (N, 2), coords' attrs."""
    with h5py.File(path, "r") as fh:
        feats = fh["features"]
        coords = fh["coords"]
        assert feats.dtype == np.float32 and feats.ndim == 2
        assert coords.dtype == np.int64 and coords.shape == (feats.shape[0], 2)
        assert fh["tissue"].dtype == np.float32 and fh["tissue"].shape == (feats.shape[0],)
        for key in COORDS_ATTRS:
            assert key in coords.attrs, key
        for key in ("encoder", "encoder_sha256", "precision", "wsiproc"):
            assert key in feats.attrs, key
        return {
            "features": feats[:],
            "coords": coords[:],
            "tissue": fh["tissue"][:],
            "attrs": dict(coords.attrs),
            "fattrs": dict(feats.attrs),
        }


@pytest.fixture(scope="module")
def colour_encoder(tmp_path_factory) -> Path:
    """A TorchScript encoder of 16 dims on 32-px patches at 0.5 µm/px."""
    d = tmp_path_factory.mktemp("enc")
    return write_encoder(d / "colour.pt", seeded(MeanColour, 16), sidecar("colour", 32, 16))


def test_layout_matches_the_infer_grid_and_tissue(svs_slide_40x, colour_encoder, tmp_path):
    """At 0.5 µm/px on a 0.25 µm/px slide: coords and tissue equal infer's CSV row by row, and
    patch_size_level0 comes from the real scale (2 x 32)."""
    out = tmp_path / "features.h5"
    args = ["--min-tissue", "0.3", "--workers", "1", "--quiet"]
    rc = main(
        ["features", str(svs_slide_40x), "--encoder", str(colour_encoder), "--out", str(out)] + args
    )
    assert rc == 0
    csv_path = tmp_path / "windows.csv"
    rc = main(
        ["infer", str(svs_slide_40x), "--out", str(csv_path), "--kernel-size", "32"]
        + ["--stride", "32", "--mpp", "0.5", "--model", "builtin:mean-rgb"]
        + args
    )
    assert rc == 0
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    f = read_trident(out)
    assert len(rows) == len(f["coords"]) > 50
    assert f["coords"].tolist() == [[int(r["x"]), int(r["y"])] for r in rows]
    assert np.array_equal(f["tissue"], np.array([float(r["tissue"]) for r in rows], np.float32))
    a = f["attrs"]
    assert a["patch_size"] == 32 and a["patch_size_level0"] == 64 and a["overlap"] == 0
    assert a["mpp_level0"] == pytest.approx(0.25) and a["target_mpp"] == pytest.approx(0.5)
    assert a["level0_magnification"] == 40 and a["target_magnification"] == 20
    assert a["tile_size_um"] == pytest.approx(16.0)
    assert (a["level0_width"], a["level0_height"]) == (4022, 3006)
    assert a["name"] == svs_slide_40x.stem
    assert f["fattrs"]["encoder"] == "colour" and f["fattrs"]["precision"] == "fp32"
    assert f["features"].shape[1] == 16


def test_embeddings_equal_the_encoder_on_an_independent_read(svs_slide_20x, tmp_path):
    """Level 0 of a 0.5 µm/px slide, builtin:tiny (224 px): every row is the encoder's output
    for the pixels OpenSlide reads at that row's coords."""
    out = tmp_path / "f.h5"
    rc = main(
        ["features", str(svs_slide_20x), "--encoder", "builtin:tiny", "--out", str(out), "--quiet"]
    )
    assert rc == 0
    f = read_trident(out)
    assert f["features"].shape[1] == 128 and len(f["coords"]) > 10
    enc = Encoder("builtin:tiny")
    with openslide.OpenSlide(str(svs_slide_20x)) as osr:
        patches = np.stack(
            [
                np.asarray(osr.read_region((int(x), int(y)), 0, (224, 224)).convert("RGB"))
                for x, y in f["coords"]
            ]
        )
    np.testing.assert_allclose(f["features"], enc(patches), rtol=1e-4, atol=1e-5)
    assert f["fattrs"]["encoder_sha256"] == enc.sha256


def test_no_tissue_gives_a_valid_empty_file(slide_dir, tmp_path):
    """A blank slide: N = 0, D kept, attributes written, exit 0."""
    blank = synth.write_pyramidal_tiff(
        slide_dir / "blank_features.tif", np.full((700, 900, 3), 242, np.uint8), mpp=0.5
    )
    out = tmp_path / "f.h5"
    rc = main(["features", str(blank), "--encoder", "builtin:tiny", "--out", str(out), "--quiet"])
    assert rc == 0
    f = read_trident(out)
    assert f["features"].shape == (0, 128) and f["coords"].shape == (0, 2)
    assert f["attrs"]["patch_size_level0"] == 224


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--patch-size", "48"], "--patch-size: 48 contradicts"),
        (["--mpp", "1.0"], "--mpp: 1 contradicts"),
        (["--level", "1"], "µm/px (level 1) contradicts"),
    ],
)
def test_patch_size_or_mpp_contradicting_the_sidecar_is_refused(
    svs_slide_20x, colour_encoder, tmp_path, capsys, extra, named
):
    out = tmp_path / "f.h5"
    rc = main(
        [
            "features",
            str(svs_slide_20x),
            "--encoder",
            str(colour_encoder),
            "--out",
            str(out),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1
    assert named in err[0] and "colour.pt.json" in err[0]
    assert not out.exists() and not partial_dir(out).exists()


def test_precision_attribute_is_the_resolved_one(svs_slide_20x, tmp_path):
    """--precision auto is written as what it resolved to; bf16 embeddings stay float32."""
    for precision in ("auto", "bf16"):
        out = tmp_path / f"{precision}.h5"
        cmd = ["features", str(svs_slide_20x), "--encoder", "builtin:tiny", "--out", str(out)]
        assert main(cmd + ["--precision", precision, "--device", "cpu", "--quiet"]) == 0
        f = read_trident(out)
        assert f["fattrs"]["precision"] == resolve_precision(precision, "cpu")
        assert f["features"].dtype == np.float32


def _features_cmd(slide: Path, encoder: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "wsiproc", "features", str(slide), "--encoder", str(encoder),
        "--out", str(out), "--min-tissue", "0", "--chunk-px", "192", "--batch-size", "8",
        "--workers", "1", "--device", "cpu", "--threads", "1", "--quiet",
    ]  # fmt: skip


def test_killed_run_resumes_to_identical_features_and_coords(tiff_slide, tmp_path):
    """SIGKILL after two checkpointed chunks, rerun: features and coords byte-identical to an
    uninterrupted run; no final file existed in between."""
    enc = write_encoder(tmp_path / "slow.pt", seeded(Slow, 8, 10), sidecar("slow", 64, 8))
    killed = tmp_path / "killed" / "features.h5"
    killed.parent.mkdir()
    kill_after_two_checkpoints(_features_cmd(tiff_slide, enc, killed), killed, 120)
    assert not killed.exists()
    resumed = subprocess.run(_features_cmd(tiff_slide, enc, killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = tmp_path / "whole" / "features.h5"
    done = subprocess.run(_features_cmd(tiff_slide, enc, whole), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = read_trident(killed), read_trident(whole)
    assert a["features"].tobytes() == b["features"].tobytes()
    assert a["coords"].tobytes() == b["coords"].tobytes()
    assert len(a["coords"]) == (1107 // 64) * (1531 // 64)
    import json

    record = json.loads(killed.with_suffix(".json").read_text())
    assert record["resumed_windows"] > 0
