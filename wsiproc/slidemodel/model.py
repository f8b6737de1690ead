"""Slide models: a TorchScript / ``.pt2`` file plus sidecar JSON, or a ``builtin:`` demo.

Separate from the patch models (:mod:`wsiproc.models`) because the contract differs: one call
per slide on the whole bag, returning ``(logits (C,), attention (N,) or (N, K))``. The sidecar
is checked against the features before the model runs, and the outputs after, so a wrong model
fails with one line naming the file instead of writing a plausible-looking prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelError, one_line
from ..models import PRECISIONS

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class SlideModelSpec:
    """The sidecar of a slide model (see docs/slide-models.md).

    ``heads`` names the K attention columns (None: ``attention`` or ``attention_<k>``).
    """

    name: str
    input_dim: int | None
    classes: tuple[str, ...]
    task: str
    encoder: str | None
    needs_coords: bool = False
    precision: str = "fp32"
    heads: tuple[str, ...] | None = None


def parse_spec(data: Any, where: str) -> SlideModelSpec:
    """Check a sidecar object; ``where`` names the file in messages.

    Raises
    ------
    ModelError
        A key is missing or has the wrong type.
    """
    if not isinstance(data, dict):
        raise ModelError(where, "slide model sidecar must be a JSON object")
    for key in ("name", "input_dim", "classes", "task", "encoder"):
        if key not in data:
            raise ModelError(where, f"slide model sidecar lacks key {key!r}")
    dim = data["input_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ModelError(where, f"key 'input_dim' must be a positive integer, got {dim!r}")
    classes = data["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelError(where, "key 'classes' must be a non-empty list of names")
    if data["task"] not in TASKS:
        raise ModelError(where, f"key 'task' must be one of {', '.join(TASKS)}")
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ModelError(where, f"key 'precision' must be one of {', '.join(PRECISIONS)}")
    heads = data.get("heads")
    if heads is not None and (
        not isinstance(heads, list) or not heads or not all(isinstance(h, str) for h in heads)
    ):
        raise ModelError(where, "key 'heads' must be a non-empty list of names")
    encoder = data["encoder"]
    return SlideModelSpec(
        name=str(data["name"]),
        input_dim=dim,
        classes=tuple(classes),
        task=data["task"],
        encoder=None if encoder is None else str(encoder),
        needs_coords=bool(data.get("needs_coords", False)),
        precision=precision,
        heads=None if heads is None else tuple(heads),
    )


@dataclass(frozen=True)
class SlideOutput:
    """One slide's model output: ``logits`` (C,) and ``attention`` (N, K), float64."""

    logits: np.ndarray
    attention: np.ndarray


class SlideModel:
    """A loaded slide model: its spec, sha256 and the callable module, on one device.

    Holds the module for its lifetime; not thread-safe (torch modules are not).
    """

    def __init__(self, source: str, spec: SlideModelSpec, module: Any, sha256: str, device: str):
        self.source = source
        self.spec = spec
        self.module = module
        self.sha256 = sha256
        self.device = device

    def __repr__(self) -> str:
        return f"SlideModel({self.source!r}, name={self.spec.name!r}, device={self.device!r})"

    @property
    def dtype(self) -> Any:
        """The torch dtype the bag is read in (the sidecar's ``precision``)."""
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.spec.precision
        ]

    def check_features(self, dim: int, encoder: str | None, *, allow_mismatch: bool) -> None:
        """Refuse features of another width or (unless allowed) another encoder.

        Raises
        ------
        ModelError
            ``input_dim`` differs from D, or the encoders differ.
        """
        if self.spec.input_dim is not None and self.spec.input_dim != dim:
            problem = (
                f"model input_dim {self.spec.input_dim} but the features have D = {dim} "
                "(features of another encoder?)"
            )
            raise ModelError(self.source, problem)
        if (
            not allow_mismatch
            and self.spec.encoder is not None
            and encoder is not None
            and self.spec.encoder != encoder
        ):
            problem = (
                f"trained on encoder {self.spec.encoder!r} but the features come from "
                f"{encoder!r}; pass --allow-encoder-mismatch to run anyway"
            )
            raise ModelError(self.source, problem)

    def __call__(self, bag: Any, coords: np.ndarray) -> SlideOutput:
        """Run on the (N, D) tensor ``bag`` (and (N, 2) level-0 ``coords`` when needed).

        Raises
        ------
        ModelError
            The output is not ``(logits (C,), attention (N,) or (N, K))`` or holds NaN/inf.
        """
        import torch

        n = int(bag.shape[0])
        with torch.inference_mode():
            x = bag.to(self.device)
            args = [x]
            if self.spec.needs_coords:
                args.append(torch.from_numpy(np.ascontiguousarray(coords)).to(self.device))
            try:
                out = self.module(*args)
            except Exception as exc:  # noqa: BLE001 - any failure inside the model is its own
                raise ModelError(self.source, f"forward failed: {one_line(exc)}") from exc
            del x, args
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ModelError(self.source, "forward must return a tuple (logits, attention)")
        logits, attention = (_to_numpy(t, self.source) for t in out)
        c = len(self.spec.classes)
        if logits.shape not in ((c,), (1, c)):
            problem = f"logits have shape {list(logits.shape)}, want [{c}] (classes in sidecar)"
            raise ModelError(self.source, problem)
        if attention.ndim == 1:
            attention = attention[:, None]
        if attention.ndim != 2 or attention.shape[0] != n:
            problem = f"attention has shape {list(attention.shape)}, want [{n}] or [{n}, K]"
            raise ModelError(self.source, problem)
        heads = self.spec.heads
        if heads is not None and len(heads) != attention.shape[1]:
            problem = f"attention has {attention.shape[1]} heads, sidecar names {len(heads)}"
            raise ModelError(self.source, problem)
        for label, arr in (("logits", logits), ("attention", attention)):
            if not np.isfinite(arr).all():
                raise ModelError(self.source, f"{label} contain NaN or infinite values")
        return SlideOutput(logits.reshape(c), attention)

    def head_names(self, k: int) -> list[str]:
        """Column names of the K attention heads."""
        if self.spec.heads is not None:
            return list(self.spec.heads)
        return ["attention"] if k == 1 else [f"attention_{i}" for i in range(k)]


def _to_numpy(value: Any, source: str) -> np.ndarray:
    """A model output tensor as float64 numpy."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise ModelError(source, f"forward returned {type(value).__name__}, not a tensor")
    return value.detach().float().cpu().numpy().astype(np.float64)
