"""Encoders written on the fly for the feature tests (and the features benchmark).

Pure torch, randomly initialised from a fixed seed, exported to TorchScript or ``torch.export``
with the sidecar JSON the user would write: the same files a real UNI or Phikon export gives,
at a size a 2-core test machine runs in milliseconds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class ViT(nn.Module):
    """A plain ViT (patch embedding, class token, pre-norm blocks); returns all tokens.

    ``ViT(768, 12, 12, 16, 224)`` is ViT-B/16 (86 M parameters), the architecture of Phikon
    and CONCH v1.5's tower; the tests use a 2-block, 64-wide one.
    """

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + (image // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.norm(self.blocks(t))


class MeanColour(nn.Module):
    """(n, 3) -> (n, dim): the mean colour times a fixed matrix; ``scale`` NaN gives NaNs."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3))) * self.scale


class Slow(nn.Module):
    """Mean colour after a fixed amount of matrix work: slow enough to kill mid-run."""

    def __init__(self, dim: int, rounds: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.work = nn.Parameter(torch.randn(384, 384) / 20.0)
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.work
        acc = torch.zeros(384, 384)
        for _ in range(self.rounds):
            acc = torch.tanh(acc @ w + w)
        return self.proj(x.mean(dim=(2, 3))) + acc.mean() * 0.0


def write_encoder(path: Path, module: nn.Module, sidecar: dict[str, Any]) -> Path:
    """Export ``module`` (traced at the sidecar's input size) to ``path``, sidecar beside it:
    ``torch.export`` for a ``.pt2`` path, else TorchScript."""
    kind = "pt2" if path.suffix == ".pt2" else "torchscript"
    torch.manual_seed(0)
    module = module.eval()
    size = sidecar["input_size"]
    example = torch.rand(2, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: deprecated, supported
        if kind == "pt2":
            dynamic = {"x": {0: torch.export.Dim.DYNAMIC}}  # any batch size
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
            torch.export.save(program, str(path))
        elif isinstance(module, Slow):
            torch.jit.save(torch.jit.script(module), str(path))
        else:
            torch.jit.save(torch.jit.trace(module, example), str(path))
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


def sidecar(name: str, size: int, dim: int, mpp: float | None = 0.5, **extra: Any) -> dict:
    """A complete sidecar dict with ImageNet normalisation."""
    return {"name": name, "input_size": size, "mpp": mpp, "output_dim": dim, **IMAGENET, **extra}


def seeded(factory: Any, *args: Any) -> nn.Module:
    """``factory(*args)`` with weights from seed 0 (the same file in every run)."""
    torch.manual_seed(0)
    return factory(*args)
