"""The STAMP, slideflow and CLAM exports, opened as each tool opens them (issue 15).

The loaders below are written from each tool's documented layout with h5py / numpy / torch
only (never importing the tools): STAMP's ``get_coords`` (µm coordinates from ``tile_size_um``
and ``unit``), slideflow's bag loading (``torch.load`` of the ``.pt``, ``arr_0`` of the index,
``bags_config.json``), CLAM's MIL dataset (``torch.load`` of ``pt_files/<slide>.pt``).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from wsiproc.cli import main
from wsiproc.features.export import read_features


@pytest.fixture(scope="module")
def features_h5(svs_slide_40x, tmp_path_factory) -> Path:
    """builtin:tiny features of the 0.25 µm/px slide at 0.5 µm/px (level-0 patch 448 px),
    with every export written by ``--export`` beside it."""
    out = tmp_path_factory.mktemp("feat") / "features.h5"
    cmd = ["features", str(svs_slide_40x), "--encoder", "builtin:tiny", "--out", str(out)]
    assert main(cmd + ["--export", "stamp", "--export", "slideflow", "--export", "clam"]) == 0
    return out


def load_stamp(path: Path) -> tuple[torch.Tensor, np.ndarray, float]:
    """STAMP: ``feats`` and ``coords`` in µm; tile size from ``tile_size_um`` (unit ``um``)."""
    with h5py.File(path, "r") as h5:
        feats = torch.from_numpy(h5["feats"][:])
        coords_um = h5["coords"][:]
        if h5.attrs.get("unit") != "um" or "tile_size_um" not in h5.attrs:
            raise RuntimeError("unable to infer coordinates")
        return feats, coords_um, float(h5.attrs["tile_size_um"])


def load_slideflow(folder: Path, slide: str) -> tuple[torch.Tensor, np.ndarray, dict]:
    """slideflow: ``<slide>.pt``, ``<slide>.index.npz`` (``arr_0``) and ``bags_config.json``."""
    bag = torch.load(folder / f"{slide}.pt", weights_only=True)
    locations = np.load(folder / f"{slide}.index.npz")["arr_0"]
    config = json.loads((folder / "bags_config.json").read_text())
    return bag, locations, config


def test_stamp_reads_features_and_micrometre_coordinates(features_h5):
    ff = read_features(features_h5)
    feats, coords_um, tile_um = load_stamp(features_h5.parent / "stamp" / f"{ff.name}.h5")
    assert feats.dtype == torch.float32 and torch.equal(feats, torch.from_numpy(ff.features))
    np.testing.assert_allclose(coords_um, ff.coords * 0.25, rtol=1e-6)
    assert tile_um == pytest.approx(448 * 0.25)
    with h5py.File(features_h5.parent / "stamp" / f"{ff.name}.h5", "r") as h5:
        assert h5.attrs["tile_size_px"] == 224 and h5.attrs["extractor"] == "builtin:tiny"


def test_slideflow_reads_bag_centres_and_config(features_h5):
    ff = read_features(features_h5)
    bag, locations, config = load_slideflow(features_h5.parent / "slideflow", ff.name)
    assert bag.dtype == torch.float32 and bag.shape == ff.features.shape
    assert torch.equal(bag, torch.from_numpy(ff.features))
    assert locations.tolist() == (ff.coords + 224).tolist()  # centres of 448-px level-0 tiles
    assert config["num_features"] == 128 and config["tile_px"] == 224
    assert config["tile_um"] == pytest.approx(112.0)
    assert config["extractor"]["class"] == "builtin:tiny" and config["normalizer"] is None


def test_clam_reads_the_pt_bag_and_the_h5(features_h5):
    ff = read_features(features_h5)
    bag = torch.load(features_h5.parent / "clam" / "pt_files" / f"{ff.name}.pt", weights_only=True)
    assert bag.dtype == torch.float32 and torch.equal(bag, torch.from_numpy(ff.features))
    with h5py.File(features_h5.parent / "clam" / "h5_files" / f"{ff.name}.h5", "r") as h5:
        assert h5["coords"].dtype == np.int32
        assert h5["coords"][:].tolist() == ff.coords.tolist()
        assert np.array_equal(h5["features"][:], ff.features)


def test_features_export_command_writes_the_same_files(features_h5, tmp_path):
    """``wsiproc features-export`` gives byte-identical bags to ``--export``."""
    ff = read_features(features_h5)
    assert (
        main(
            [
                "features-export",
                str(features_h5),
                "--to",
                "slideflow",
                "--to",
                "clam",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    for rel in (
        f"slideflow/{ff.name}.pt",
        f"slideflow/{ff.name}.index.npz",
        f"clam/pt_files/{ff.name}.pt",
    ):
        a = (
            torch.load(tmp_path / rel, weights_only=True)
            if rel.endswith(".pt")
            else np.load(tmp_path / rel)["arr_0"]
        )
        b = (
            torch.load(features_h5.parent / rel, weights_only=True)
            if rel.endswith(".pt")
            else np.load(features_h5.parent / rel)["arr_0"]
        )
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not (tmp_path / "stamp").exists()


def test_slideflow_refuses_a_directory_of_other_bags(features_h5, tmp_path, capsys):
    config = tmp_path / "slideflow" / "bags_config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"num_features": 1024}))
    rc = main(["features-export", str(features_h5), "--to", "slideflow", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and str(config) in err[0] and "holds other bags" in err[0]
    assert list(config.parent.iterdir()) == [config]


def test_exporting_a_file_that_is_not_a_features_file_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "x.h5"
    with h5py.File(bogus, "w") as h5:
        h5["feats"] = np.zeros((1, 2), np.float32)
    rc = main(["features-export", str(bogus), "--to", "stamp", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"error: {bogus}: not a features file: no dataset 'features'"]
