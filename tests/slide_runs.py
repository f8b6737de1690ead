"""Slide-model test pieces: a closed-form attention model, random bags, in-process CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsiproc import cli

CLASSES = ["benign", "tumour"]


class ProjectionAttention(nn.Module):
    """Attention in closed form: softmax over patches of ``x @ w``; logits ``(a @ x) @ W``."""

    def __init__(self, w: torch.Tensor, classify: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("classify", classify)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = torch.softmax(x @ self.w, dim=0)
        return (attention @ x) @ self.classify, attention


def closed_form(x: np.ndarray, w: np.ndarray, classify: np.ndarray) -> tuple[np.ndarray, ...]:
    """Expected (logits, attention) of :class:`ProjectionAttention`, in float64."""
    s = x.astype(np.float64) @ w
    a = np.exp(s - s.max())
    a /= a.sum()
    return (a @ x) @ classify, a


def save_model(
    directory: Path, module: nn.Module, *, dim: int, encoder: str = "test-encoder", **extra
) -> Path:
    """Script ``module`` to ``directory/model.pt`` with its sidecar; return the model path."""
    path = directory / "model.pt"
    torch.jit.script(module).save(str(path))
    side = {"name": "proj", "input_dim": dim, "classes": CLASSES, "task": "classification"}
    side.update({"encoder": encoder, **extra})
    (directory / "model.pt.json").write_text(json.dumps(side))
    return path


def make_bag(seed: int = 0, *, rows: int = 7, cols: int = 9, dim: int = 16, keep: float = 0.7):
    """Random grid cells (kept with probability ``keep``) and features for them."""
    rng = np.random.default_rng(seed)
    cells = [(r, c) for r in range(rows) for c in range(cols) if rng.random() < keep]
    r = np.array([a for a, _ in cells])
    c = np.array([b for _, b in cells])
    x = rng.normal(size=(len(cells), dim)).astype(np.float32)
    return r, c, x, rng


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    """``wsiproc`` in-process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def predict(capsys, h5: Path, model: Path | str, out: Path, *extra: object):
    """Run slide-predict writing ``out/slide.json`` and ``out/attention.csv``."""
    return run_cli(
        capsys,
        "slide-predict",
        h5,
        "--model",
        model,
        "--out",
        out / "slide.json",
        "--attention-out",
        out / "attention.csv",
        "--device",
        "cpu",
        *extra,
    )


def numeric_columns(csv_path: Path) -> np.ndarray:
    """The numeric columns of an attention CSV: row, col, x, y, width, height, level, tissue,
    then the heads (patient and slide dropped)."""
    with open(csv_path) as fh:
        n_cols = len(fh.readline().split(","))
    return np.loadtxt(csv_path, delimiter=",", skiprows=1, usecols=range(2, n_cols), ndmin=2)
