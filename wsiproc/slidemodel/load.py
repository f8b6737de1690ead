"""Which slide model a source names: a ``builtin:`` demo or a TorchScript/.pt2 file + sidecar.

Apart from :mod:`.model` so the flow is one-way: ``load`` imports ``model`` and ``builtin``,
and ``builtin`` builds on ``model``'s types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError, one_line
from ..models import BUILTIN_PREFIX, file_sha256, sidecar_path
from ..program import load_torchscript
from .builtin import load_builtin
from .model import SlideModel, parse_spec


def load_slide_model(source: str, *, device: str, dim: int) -> SlideModel:
    """Load ``builtin:<name>`` (built for width ``dim``) or a TorchScript/.pt2 file + sidecar.

    Raises
    ------
    ModelError
        The file, its sidecar or a sidecar key is missing or unreadable.
    ConfigError
        An unknown device.
    """
    from ..models import resolve_device

    device = resolve_device(device)
    if source.startswith(BUILTIN_PREFIX):
        return load_builtin(source, dim=dim, device=device)
    path = Path(source)
    if not path.is_file():
        raise ModelError(source, "no such slide model file")
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(str(side), "slide model sidecar JSON not found") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(str(side), f"unreadable slide model sidecar: {one_line(exc)}") from exc
    spec = parse_spec(data, str(side))
    module = _load_module(path, device)
    return SlideModel(source, spec, module, file_sha256(path), device)


def _load_module(path: Path, device: str) -> Any:
    """A TorchScript module or a ``torch.export`` program's module, in eval mode."""
    import torch

    if path.suffix != ".pt2":
        return load_torchscript(path, device, kind="slide model")
    try:
        return torch.export.load(str(path)).module().to(device)
    except Exception as exc:  # noqa: BLE001 - any load failure is a model error
        raise ModelError(str(path), f"not a loadable slide model: {one_line(exc)}") from exc
