"""Slide models beyond the basic contract (issue 16): built-in demo, coords, several heads,
bf16 bags, ``.pt2`` programs, regression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from features_h5 import grid_coords, write_features_h5
from slide_runs import (
    ProjectionAttention,
    closed_form,
    make_bag,
    numeric_columns,
    predict,
    run_cli,
    save_model,
)
from torch import nn

from wsiproc.record import read_record
from wsiproc.slidemodel import read_bag, read_header


class CoordAttention(nn.Module):
    """Attention from the coords alone: x / sum(x) of each patch's level-0 x (+1)."""

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = coords[:, 0].to(torch.float32) + 1.0
        return x.sum(0)[:2], w / w.sum()


class TwoHeads(nn.Module):
    """Head 0 softmax of feature 0, head 1 softmax of feature 1: (N, 2)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(0)[:2], torch.softmax(x[:, :2], dim=0)


def bag_file(tmp_path: Path, seed: int = 0, dim: int = 16) -> tuple[Path, np.ndarray, np.ndarray]:
    """A features.h5; returns (path, features, coords)."""
    rows, cols, x, _ = make_bag(seed, dim=dim)
    coords = grid_coords(rows, cols, stride_px=224, scale=2.0)
    return write_features_h5(tmp_path / f"f{seed}_{dim}.h5", x, coords), x, coords


@pytest.mark.parametrize("dim", [16, 48])
def test_builtin_demo_is_deterministic_for_any_width(tmp_path: Path, capsys, dim: int) -> None:
    """Two runs give byte-identical slide.json and attention CSV; attention sums to 1."""
    h5, x, _ = bag_file(tmp_path, dim=dim)
    for name in ("a", "b"):
        code, _, err = predict(capsys, h5, "builtin:abmil-demo", tmp_path / name)
        assert code == 0, err
    for name in ("slide.json", "attention.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    data = json.loads((tmp_path / "a" / "slide.json").read_text())
    assert data["model"] == "abmil-demo" and data["classes"] == ["class_a", "class_b"]
    assert sum(data["probabilities"]) == pytest.approx(1.0)
    attention = numeric_columns(tmp_path / "a" / "attention.csv")[:, 8]
    assert attention.sum() == pytest.approx(1.0, rel=1e-5) and len(attention) == len(x)
    assert attention.std() > 0  # seeded weights, not a uniform placeholder


def test_needs_coords_passes_level0_coords(tmp_path: Path, capsys) -> None:
    h5, _, coords = bag_file(tmp_path, seed=1)
    (tmp_path / "m").mkdir()
    model = save_model(tmp_path / "m", CoordAttention(), dim=16, needs_coords=True)
    code, _, err = predict(capsys, h5, model, tmp_path)
    assert code == 0, err
    got = numeric_columns(tmp_path / "attention.csv")
    want = (got[:, 2] + 1) / (coords[:, 0] + 1).sum()  # column 2 is x
    np.testing.assert_allclose(got[:, 8], want, rtol=1e-6)


def test_two_heads_become_two_columns_and_two_bands(tmp_path: Path, capsys) -> None:
    h5, x, _ = bag_file(tmp_path, seed=2)
    (tmp_path / "m").mkdir()
    model = save_model(tmp_path / "m", TwoHeads(), dim=16, heads=["tumour", "stroma"])
    assert predict(capsys, h5, model, tmp_path)[0] == 0
    meta = read_record(tmp_path / "attention.json")
    assert meta.outputs == ("tumour", "stroma")
    tif = tmp_path / "a.tif"
    code, _, err = run_cli(
        capsys, "heatmap", tmp_path / "attention.csv", "--out", tif,
        "--rgb-out", tmp_path / "a_rgb.tif", "--output", "stroma", "--color-scale", "rank",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "slide.json").read_text())
    assert data["attention_heads"] == ["tumour", "stroma"]
    assert len(data["attention_off_tissue_share"]) == 2


def test_bf16_sidecar_reads_the_bag_in_bf16(tmp_path: Path, capsys) -> None:
    """The bag arrives in the model's precision; values are the float32 ones rounded."""
    h5, x, _ = bag_file(tmp_path, seed=3)
    bag = read_bag(read_header(h5), torch.bfloat16)
    assert bag.dtype == torch.bfloat16
    assert torch.equal(bag, torch.from_numpy(x).to(torch.bfloat16))
    (tmp_path / "m").mkdir()
    w, c = torch.ones(16, dtype=torch.bfloat16), torch.ones(16, 2, dtype=torch.bfloat16)
    model = save_model(tmp_path / "m", ProjectionAttention(w, c), dim=16, precision="bf16")
    code, _, err = predict(capsys, h5, model, tmp_path)
    assert code == 0, err


def test_small_read_blocks_give_the_same_bag(tmp_path: Path, monkeypatch) -> None:
    """Block boundaries do not change what is read (here 3 rows per block)."""
    from wsiproc.slidemodel import features

    h5, x, _ = bag_file(tmp_path, seed=4)
    monkeypatch.setattr(features, "READ_BYTES", 3 * 16 * 4)
    for dtype in (torch.float32, torch.float16):
        got = read_bag(read_header(h5), dtype)
        assert torch.equal(got, torch.from_numpy(x).to(dtype))


def test_exported_pt2_program_with_dynamic_n(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    w, c = rng.normal(size=16).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    module = ProjectionAttention(torch.from_numpy(w), torch.from_numpy(c)).eval()
    n = torch.export.Dim("n", min=2)
    program = torch.export.export(module, (torch.zeros(5, 16),), dynamic_shapes=({0: n},))
    path = tmp_path / "proj.pt2"
    torch.export.save(program, str(path))
    side = {"name": "proj", "input_dim": 16, "classes": ["a", "b"], "task": "classification"}
    (tmp_path / "proj.pt2.json").write_text(json.dumps({**side, "encoder": None}))
    h5, x, _ = bag_file(tmp_path, seed=5)
    code, _, err = predict(capsys, h5, path, tmp_path)
    assert code == 0, err
    logits, attention = closed_form(x, w, c)
    data = json.loads((tmp_path / "slide.json").read_text())
    np.testing.assert_allclose(data["logits"], logits, rtol=1e-5)
    got = numeric_columns(tmp_path / "attention.csv")[:, 8]
    np.testing.assert_allclose(np.sort(got), np.sort(attention), rtol=1e-5)  # float32 exp


def test_regression_has_no_probabilities(tmp_path: Path, capsys) -> None:
    h5, _, _ = bag_file(tmp_path, seed=6)
    (tmp_path / "m").mkdir()
    module = ProjectionAttention(torch.ones(16), torch.ones(16, 1))
    model = save_model(tmp_path / "m", module, dim=16)
    side = json.loads(model.with_name("model.pt.json").read_text())
    side.update(task="regression", classes=["survival_months"])
    model.with_name("model.pt.json").write_text(json.dumps(side))
    assert predict(capsys, h5, model, tmp_path)[0] == 0
    data = json.loads((tmp_path / "slide.json").read_text())
    assert data["probabilities"] is None and data["predicted_class"] is None
    assert len(data["logits"]) == 1


def test_attention_on_background_is_flagged(tmp_path: Path, capsys) -> None:
    """Attention mass on windows with tissue < 0.5 above the threshold sets the QC flag."""
    rows, cols, x, _ = make_bag(7)
    tissue = np.where(x[:, 0] > 0, 0.2, 0.9).astype(np.float32)
    coords = grid_coords(rows, cols, stride_px=224, scale=2.0)
    h5 = write_features_h5(tmp_path / "f.h5", x, coords, tissue=tissue)
    (tmp_path / "m").mkdir()
    w = torch.zeros(16)
    w[0] = 20.0  # attention goes to large feature 0, i.e. to the low-tissue windows
    model = save_model(tmp_path / "m", ProjectionAttention(w, torch.ones(16, 2)), dim=16)
    assert predict(capsys, h5, model, tmp_path, "--attention-threshold", "0.5")[0] == 0
    data = json.loads((tmp_path / "slide.json").read_text())
    _, attention = closed_form(x, w.numpy(), np.ones((16, 2)))
    share = attention[tissue < 0.5].sum()
    assert data["attention_off_tissue_share"][0] == pytest.approx(share, rel=1e-5)
    assert share > 0.5 and data["qc_flags"] == ["attention_off_tissue"]


def test_zero_patches_is_a_flagged_slide_not_an_error(tmp_path: Path, capsys) -> None:
    """A glass-only slide (N = 0): no model run, null prediction, flag no_patches, an empty
    attention CSV whose heatmap is one transparent pixel."""
    h5 = write_features_h5(tmp_path / "f.h5", np.zeros((0, 16)), np.zeros((0, 2)))
    code, out, err = predict(capsys, h5, "builtin:abmil-demo", tmp_path)
    assert code == 0, err
    assert "no patches" in out
    data = json.loads((tmp_path / "slide.json").read_text())
    assert data["qc_flags"] == ["no_patches"] and data["n_patches"] == 0
    assert data["logits"] is None and data["probabilities"] is None
    assert data["predicted_class"] is None
    assert numeric_columns(tmp_path / "attention.csv").shape == (0, 9)
    code, _, err = run_cli(
        capsys, "heatmap", tmp_path / "attention.csv", "--out", tmp_path / "a.tif",
        "--rgb-out", tmp_path / "a_rgb.tif", "--color-scale", "rank",
    )  # fmt: skip
    assert code == 0, err


def test_builtin_demo_blocks_do_not_change_its_output(monkeypatch) -> None:
    """The demo's row blocks (a memory bound) give the whole-bag result, to float32 rounding."""
    from wsiproc.slidemodel import builtin

    x = torch.from_numpy(np.random.default_rng(8).normal(size=(50, 24)).astype(np.float32))
    whole_logits, whole_attention = builtin.build_module(24)(x)
    monkeypatch.setattr(builtin, "BLOCK_ROWS", 7)
    logits, attention = builtin.build_module(24)(x)
    torch.testing.assert_close(attention, whole_attention, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(logits, whole_logits, rtol=1e-5, atol=1e-6)
