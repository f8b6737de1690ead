"""Encoders built from a timm architecture name and a local weights file (sidecar key ``timm``).

Labs download UNI, H-optimus-0, Virchow2 or a ResNet-50 as timm state dicts
(``.safetensors`` or ``pytorch_model.bin``). Here the architecture is built with
``timm.create_model(name, pretrained=False, **kwargs)`` (nothing downloaded: the hub is set
offline before timm is imported), filled from the file with a strict load, and wrapped so the
:class:`~wsiproc.features.encoder.Encoder` runs it like any other module. timm is an optional
extra (``pip install 'wsiproc[timm]'``); it needs torchvision, so its tests run in a second
environment (``scripts/install_timm.sh``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError, one_line
from .sidecar import TIMM_CLASSES, EncoderSpec, TimmSpec

SHOWN_KEYS = 3
"""How many missing / unexpected keys a mismatch error names."""
NO_TIMM = "this sidecar names a timm architecture; install timm (pip install 'wsiproc[timm]')"


def check_usable(weights: Path, spec: EncoderSpec, *, compiling: bool) -> None:
    """Refuse early, without importing torch: ``--compile`` or timm not installed.

    Raises
    ------
    ConfigError
        ``compiling`` (``--compile``) with a timm encoder (only ``torch.export`` programs compile).
    ModelError
        timm is not installed.
    """
    if spec.timm is None:
        return
    if compiling:
        raise ConfigError(
            "compile",
            f"{weights} is a timm weights file; only torch.export programs (.pt2) compile "
            "(run without --compile)",
        )
    if importlib.util.find_spec("timm") is None:
        raise ModelError(str(weights), NO_TIMM)


def _import_timm(weights: Path) -> Any:
    """timm, imported with the Hugging Face hub offline (nothing may be downloaded)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import timm
    except ImportError as exc:
        if exc.name == "timm":
            raise ModelError(str(weights), NO_TIMM) from exc
        raise ModelError(str(weights), f"timm does not import: {one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch
        raise ModelError(str(weights), f"timm does not import: {one_line(exc)}") from exc
    return timm


def resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the class names of :data:`TIMM_CLASSES` replaced by the classes.

    Only that table is resolved (the sidecar parser refused any other ``timm.``/``torch.``
    string), so a sidecar cannot make wsiproc import arbitrary code.
    """
    import timm.layers
    import torch

    table = {
        "timm.layers.SwiGLUPacked": timm.layers.SwiGLUPacked,
        "timm.layers.SwiGLU": timm.layers.SwiGLU,
        "timm.layers.Mlp": timm.layers.Mlp,
        "torch.nn.SiLU": torch.nn.SiLU,
        "torch.nn.GELU": torch.nn.GELU,
    }
    assert set(table) == set(TIMM_CLASSES), "keep the table and the sidecar's list in step"

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value in table:
            return table[value]
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    return {key: resolve(value) for key, value in kwargs.items()}


def load_weights(path: Path) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (read with weights_only).

    A top-level ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper (training checkpoints)
    is unwrapped.

    Raises
    ------
    ModelError
        The file does not load, or holds something other than named tensors.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is a model error
        kind = "safetensors file" if path.suffix == ".safetensors" else "torch.save state dict"
        raise ModelError(str(path), f"not a loadable {kind}: {one_line(exc)}") from exc
    if isinstance(raw, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), Mapping):
                raw = raw[wrapper]
                break
    ok = isinstance(raw, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    )
    if not ok or not raw:
        raise ModelError(str(path), "holds no state dict (a mapping of names to tensors)")
    return dict(raw)


def _first(keys: set[str]) -> str:
    shown = sorted(keys)[:SHOWN_KEYS]
    more = ", ..." if len(keys) > SHOWN_KEYS else ""
    return ", ".join(shown) + more


def _check_fit(path: Path, arch: str, model: Any, state: Mapping[str, Any]) -> None:
    """One line naming the weights file if its keys or shapes differ from the architecture."""
    wanted = model.state_dict()
    missing, unexpected = set(wanted) - set(state), set(state) - set(wanted)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        problem = f"weights do not fit timm architecture {arch!r}: " + "; ".join(parts)
        raise ModelError(str(path), problem)
    wrong = [k for k in wanted if tuple(state[k].shape) != tuple(wanted[k].shape)]
    if wrong:
        key = wrong[0]
        problem = (
            f"weights do not fit timm architecture {arch!r}: {len(wrong)} with another shape "
            f"(first: {key}, {tuple(state[key].shape)} in the file, "
            f"{tuple(wanted[key].shape)} in the model)"
        )
        raise ModelError(str(path), problem)


def _build(timm: Any, tspec: TimmSpec, sidecar: Path, *, meta: bool) -> Any:
    """``timm.create_model`` on the meta device (no memory, no random init) or the CPU."""
    import torch

    kwargs = resolve_kwargs(tspec.kwargs)
    try:
        if meta:
            with torch.device("meta"):
                return timm.create_model(tspec.model, pretrained=False, **kwargs)
        return timm.create_model(tspec.model, pretrained=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a bad kwarg raises anything
        raise ModelError(str(sidecar), f"key 'timm.kwargs': {one_line(exc)}") from exc


def wrap(model: Any, method: str) -> Any:
    """The module the encoder runs: ``model.<method>``, a list/tuple of maps reduced to its
    last element (``features_only=True`` returns one map per ``out_indices``: the deepest)."""
    from torch import nn

    class TimmForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.method = method

        def forward(self, x: Any) -> Any:
            y = getattr(self.model, self.method)(x)
            return y[-1] if isinstance(y, (list, tuple)) else y

    return TimmForward().eval()


def load_timm(weights: Path, spec: EncoderSpec, sidecar: Path) -> Any:
    """The timm architecture of ``spec.timm`` filled from ``weights``, on the CPU, eval mode.

    Built on the meta device and the file's tensors assigned (no random init, one copy of
    the weights in memory); if the architecture keeps tensors the file does not hold
    (non-persistent buffers), built again on the CPU and loaded by copy.

    Raises
    ------
    ModelError
        timm missing, an unknown architecture (naming ``timm.model``), kwargs timm refuses,
        an unreadable file, or weights whose keys or shapes do not fit.
    """
    tspec = spec.timm
    assert tspec is not None
    timm = _import_timm(weights)
    if not timm.is_model(tspec.model):
        problem = (
            f"unknown timm architecture {tspec.model!r} (timm {timm.__version__}; "
            "timm.list_models() lists them)"
        )
        raise ModelError(str(sidecar), f"key 'timm.model': {problem}")
    state = load_weights(weights)
    if tspec.drop_keys:
        state = {k: v for k, v in state.items() if not k.startswith(tspec.drop_keys)}
    model = _build(timm, tspec, sidecar, meta=True)
    _check_fit(weights, tspec.model, model, state)
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        model = _build(timm, tspec, sidecar, meta=False)
        model.load_state_dict(state, strict=True)
    if not hasattr(model, tspec.forward):
        problem = f"{type(model).__name__} has no method {tspec.forward!r}"
        raise ModelError(str(sidecar), f"key 'timm.forward': {problem}")
    return wrap(model, tspec.forward)
