"""``builtin:abmil-demo``: a gated-attention MIL model with seeded weights, for the demo.

A demonstration only: its weights are drawn from a fixed seed, never trained, so its
predictions mean nothing. It exists so the demo and the tests run the whole chain (features ->
slide model -> attention heatmap -> report) without a download. The weights are generated for
the features' width D at load time (numpy's PCG64, stable across platforms), so it accepts the
output of any encoder.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import ModelError
from ..models import BUILTIN_PREFIX
from .model import SlideModel, SlideModelSpec

DEMO_NAME = "abmil-demo"
DEMO_CLASSES = ("class_a", "class_b")
DEMO_HIDDEN = 64
DEMO_SEED = 20_160
BLOCK_ROWS = 8192
"""Patches per block of the demo's forward pass."""


def demo_weights(dim: int) -> dict[str, np.ndarray]:
    """The demo's float32 weights for input width ``dim``, from :data:`DEMO_SEED`.

    Examples
    --------
    >>> w = demo_weights(8)
    >>> w["project"].shape, w["classify"].shape
    ((8, 64), (64, 2))
    >>> bool((demo_weights(8)["gate"] == w["gate"]).all())
    True
    """
    rng = np.random.default_rng([DEMO_SEED, dim])
    h = DEMO_HIDDEN

    def draw(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return {
        "project": draw((dim, h), dim),
        "value": draw((h, h), h),
        "gate": draw((h, h), h),
        "score": draw((h, 1), h),
        "classify": draw((h, len(DEMO_CLASSES)), h),
    }


def build_module(dim: int) -> Any:
    """The demo as a torch module: ``forward(x (N, D)) -> (logits (2,), attention (N,))``."""
    import torch
    from torch import nn

    weights = {k: torch.from_numpy(v) for k, v in demo_weights(dim).items()}

    class GatedABMIL(nn.Module):
        """Ilse et al.'s gated attention pooling: softmax over patches, weighted mean."""

        def __init__(self) -> None:
            super().__init__()
            for key, value in weights.items():
                self.register_buffer(key, value)

        def hidden(self, x: torch.Tensor) -> torch.Tensor:
            """ReLU projection of a block of patches: (n, D) -> (n, hidden)."""
            return torch.relu(x @ self.project)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # Row blocks keep the (N, hidden) intermediates to a few MB whatever N: the bag
            # itself is the only N-sized allocation of any size.
            scores = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
            for a in range(0, x.shape[0], BLOCK_ROWS):
                hid = self.hidden(x[a : a + BLOCK_ROWS].float())
                gated = torch.tanh(hid @ self.value) * torch.sigmoid(hid @ self.gate)
                scores[a : a + BLOCK_ROWS] = (gated @ self.score).squeeze(1)
            attention = torch.softmax(scores, dim=0)
            pooled = torch.zeros(DEMO_HIDDEN, dtype=torch.float32, device=x.device)
            for a in range(0, x.shape[0], BLOCK_ROWS):
                pooled += attention[a : a + BLOCK_ROWS] @ self.hidden(x[a : a + BLOCK_ROWS].float())
            return pooled @ self.classify, attention

    return GatedABMIL().eval()


def load_builtin(source: str, *, dim: int, device: str) -> SlideModel:
    """Build ``builtin:abmil-demo`` for width ``dim`` on ``device``.

    Raises
    ------
    ModelError
        Unknown built-in name.
    """
    name = source[len(BUILTIN_PREFIX) :]
    if name != DEMO_NAME:
        raise ModelError(
            source, f"unknown built-in slide model (known: {BUILTIN_PREFIX}{DEMO_NAME})"
        )
    digest = hashlib.sha256()
    for key, value in sorted(demo_weights(dim).items()):
        digest.update(key.encode())
        digest.update(value.tobytes())
    spec = SlideModelSpec(
        name=DEMO_NAME,
        input_dim=None,
        classes=DEMO_CLASSES,
        task="classification",
        encoder=None,
    )
    return SlideModel(source, spec, build_module(dim).to(device), digest.hexdigest(), device)
