"""Bad input to ``wsiproc slide-predict`` (issue 16): one line naming the file, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from features_h5 import grid_coords, write_features_h5
from slide_runs import ProjectionAttention, make_bag, predict, save_model
from torch import nn

OUTPUTS = ("slide.json", "attention.csv", "attention.json")


class WrongAttention(nn.Module):
    """Returns one attention score too few."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(0)[:2], torch.softmax(x[1:, 0], dim=0)


class WrongLogits(nn.Module):
    """Returns three logits for two classes."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(0)[:3], torch.softmax(x[:, 0], dim=0)


class NotATuple(nn.Module):
    """Returns the logits alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(0)[:2]


class NanAttention(nn.Module):
    """Attention with a NaN, as a model with log(0) in it produces."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.softmax(x[:, 0], dim=0)
        a[0] = float("nan")
        return x.sum(0)[:2], a


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    """A valid features.h5 of 16-wide features."""
    rows, cols, x, _ = make_bag(5)
    coords = grid_coords(rows, cols, stride_px=224, scale=2.0)
    return write_features_h5(tmp_path / "features.h5", x, coords)


def fails_cleanly(capsys, tmp_path: Path, h5: Path, model: Path | str, naming: str, *extra):
    """Run, expect exit != 0 with one error line naming ``naming``; no output file exists."""
    out = tmp_path / "out"
    code, _, err = predict(capsys, h5, model, out, *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and naming in lines[0], err
    assert not any((out / name).exists() for name in OUTPUTS)
    assert not list(out.glob(".*.tmp-*")), "a temporary file was left behind"
    return lines[0]


def identity_model(tmp_path: Path, dim: int = 16, **extra) -> Path:
    """A closed-form model of width ``dim`` saved under tmp_path/model."""
    directory = tmp_path / "model"
    directory.mkdir(exist_ok=True)
    module = ProjectionAttention(torch.ones(dim), torch.ones(dim, 2))
    return save_model(directory, module, dim=dim, **extra)


def test_missing_features_names_the_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.h5"
    line = fails_cleanly(capsys, tmp_path, missing, identity_model(tmp_path), str(missing))
    assert "unreadable features.h5" in line


def test_truncated_features_names_the_file(tmp_path: Path, capsys, bag: Path) -> None:
    cut = tmp_path / "cut.h5"
    data = bag.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    fails_cleanly(capsys, tmp_path, cut, identity_model(tmp_path), str(cut))


def test_not_hdf5_names_the_file(tmp_path: Path, capsys) -> None:
    text = tmp_path / "f.h5"
    text.write_text("features")
    fails_cleanly(capsys, tmp_path, text, identity_model(tmp_path), str(text))


def test_h5_without_coords_names_the_dataset(tmp_path: Path, capsys) -> None:
    import h5py

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        h5["features"] = np.zeros((3, 16), np.float32)
    line = fails_cleanly(capsys, tmp_path, path, identity_model(tmp_path), str(path))
    assert "'coords'" in line


def test_dimension_mismatch_names_both(tmp_path: Path, capsys, bag: Path) -> None:
    model = identity_model(tmp_path, dim=32)
    line = fails_cleanly(capsys, tmp_path, bag, model, str(model))
    assert "input_dim 32" in line and "D = 16" in line


def test_encoder_mismatch_refused_unless_allowed(tmp_path: Path, capsys, bag: Path) -> None:
    model = identity_model(tmp_path, encoder="uni_v2")
    line = fails_cleanly(capsys, tmp_path, bag, model, str(model))
    assert "'uni_v2'" in line and "'test-encoder'" in line and "--allow-encoder-mismatch" in line
    code, _, err = predict(capsys, bag, model, tmp_path / "ok", "--allow-encoder-mismatch")
    assert code == 0, err


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        (WrongAttention(), "attention has shape"),
        (WrongLogits(), "logits have shape [3], want [2]"),
        (NotATuple(), "must return a tuple"),
        (NanAttention(), "attention contain NaN"),
    ],
)
def test_bad_model_output_names_the_model(
    tmp_path: Path, capsys, bag: Path, module: nn.Module, problem: str
) -> None:
    (tmp_path / "model").mkdir()
    model = save_model(tmp_path / "model", module, dim=16)
    line = fails_cleanly(capsys, tmp_path, bag, model, str(model))
    assert problem in line


def test_sidecar_missing_key_names_the_sidecar(tmp_path: Path, capsys, bag: Path) -> None:
    model = identity_model(tmp_path)
    side = model.with_name(model.name + ".json")
    side.write_text('{"name": "m", "input_dim": 16, "task": "classification", "encoder": null}')
    line = fails_cleanly(capsys, tmp_path, bag, model, str(side))
    assert "'classes'" in line


def test_missing_model_file_and_unknown_builtin(tmp_path: Path, capsys, bag: Path) -> None:
    fails_cleanly(capsys, tmp_path, bag, tmp_path / "none.pt", "none.pt")
    fails_cleanly(capsys, tmp_path, bag, "builtin:nope", "builtin:nope")


def test_not_a_model_file_names_it(tmp_path: Path, capsys, bag: Path) -> None:
    model = identity_model(tmp_path)
    model.write_bytes(b"not a zip")
    line = fails_cleanly(capsys, tmp_path, bag, model, str(model))
    assert "not a loadable slide model" in line
