"""The encoder sidecar: the JSON beside an encoder file that says how to feed it.

Kept apart from loading so that a bad sidecar is refused, naming the file and the key, before
torch is imported or a slide is opened.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, one_line
from ..models import sidecar_path

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
POOLINGS = ("none", "cls", "mean", "cls+mean")
REQUIRED = ("name", "input_size", "mpp", "mean", "std", "output_dim")
OPTIONAL = ("precision", "pooling", "patch_size", "prefix_tokens", "interpolation", "timm")
INTERPOLATIONS = ("bilinear", "bicubic")
TIMM_KEYS = ("model", "kwargs", "forward", "drop_keys")
TIMM_FORWARDS = ("forward", "forward_features")
TIMM_CLASSES = (
    "timm.layers.SwiGLUPacked",
    "timm.layers.SwiGLU",
    "timm.layers.Mlp",
    "torch.nn.SiLU",
    "torch.nn.GELU",
)
"""The only importable names a ``timm.kwargs`` string may give (Virchow's and UNI2's
``mlp_layer``/``act_layer`` take classes, which JSON cannot hold); resolved by
:mod:`wsiproc.features.timm_encoder`. Nothing else is imported by string."""
TIMM_REFUSED_KWARGS = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
)


@dataclass(frozen=True)
class TimmSpec:
    """A timm architecture to build and fill from the encoder file (a local weights file).

    ``model`` is a timm architecture name (never a hub id: nothing is downloaded), ``kwargs``
    go to ``timm.create_model`` (strings in :data:`TIMM_CLASSES` become those classes),
    ``forward`` is the method run on a batch (``forward_features`` gives the tokens, pooled by
    the sidecar's ``pooling``), and ``drop_keys`` are key prefixes removed from the weights
    before the strict load (for a truncated network, e.g. ResNet-50 trunc without ``layer4.``
    and ``fc.``): every other key must match exactly.
    """

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    forward: str = "forward"
    drop_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncoderSpec:
    """What the sidecar declares about an encoder.

    ``input_size`` is the side (px) the network takes; ``patch_size`` the side (px at ``mpp``)
    of the patch cut from the slide (resized to ``input_size`` on the device; default
    ``input_size``). ``mpp`` is µm/px, None for an encoder meant for any resolution. ``mean``
    and ``std`` apply to 0-1 RGB. ``pooling`` turns token outputs (n, T, D) into (n, D):
    ``cls`` token 0, ``mean`` the mean of tokens from ``prefix_tokens`` on (skipping the class
    and register tokens), ``cls+mean`` both concatenated. ``timm`` is set when the encoder
    file is a timm state dict rather than a program (:class:`TimmSpec`).
    """

    name: str
    input_size: int
    mpp: float | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_dim: int
    precision: str = "fp32"
    pooling: str = "none"
    patch_size: int = 0
    prefix_tokens: int = 1
    interpolation: str = "bilinear"
    timm: TimmSpec | None = None

    def __post_init__(self) -> None:
        if not self.patch_size:
            object.__setattr__(self, "patch_size", self.input_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (part of the resume fingerprint and of the file's attributes).

        ``timm`` appears only when set, so the fingerprint of a file encoder without it is
        what it was before the key existed (a resumed run does not restart for nothing).
        """
        out = asdict(self)
        if self.timm is None:
            del out["timm"]
        else:
            out["timm"]["drop_keys"] = list(self.timm.drop_keys)
        return out


def _bad(side: Path, key: str, problem: str) -> ModelError:
    """One-line error naming the sidecar and its key."""
    return ModelError(str(side), f"key {key!r}: {problem}")


def _positive_int(side: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(side, key, f"must be a positive integer, got {value!r}")
    return value


def _triple(side: Path, key: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) and (v > 0 or not positive) for v in value)
    )
    if not ok:
        kind = "positive numbers" if positive else "numbers"
        raise _bad(side, key, f"must be a list of 3 {kind} (R, G, B on 0-1 pixels), got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _choice(side: Path, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _bad(side, key, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _json_value(side: Path, key: str, value: Any) -> None:
    """Refuse importable-looking strings outside :data:`TIMM_CLASSES`, at any depth."""
    if isinstance(value, str) and value.startswith(("timm.", "torch.")):
        if value not in TIMM_CLASSES:
            allowed = ", ".join(TIMM_CLASSES)
            raise _bad(side, key, f"{value!r} is not one of the classes allowed here ({allowed})")
    elif isinstance(value, list):
        for item in value:
            _json_value(side, key, item)
    elif isinstance(value, dict):
        for sub, item in value.items():
            _json_value(side, f"{key}.{sub}", item)


def parse_timm(raw: Any, side: Path) -> TimmSpec:
    """Validate the ``timm`` section without importing torch or timm.

    Examples
    --------
    >>> parse_timm({"model": "resnet50", "kwargs": {"features_only": True}}, Path("r.json"))
    TimmSpec(model='resnet50', kwargs={'features_only': True}, forward='forward', drop_keys=())
    """
    if not isinstance(raw, dict):
        problem = "must be an object {model, kwargs, forward, drop_keys}"
        raise _bad(side, "timm", f"{problem}, got {type(raw).__name__}")
    for key in raw:
        if key not in TIMM_KEYS:
            raise _bad(side, f"timm.{key}", "unknown key (known: " + ", ".join(TIMM_KEYS) + ")")
    if "model" not in raw:
        raise _bad(side, "timm.model", "missing (a timm architecture name, e.g. resnet50)")
    model = raw["model"]
    if not isinstance(model, str) or not model.strip():
        raise _bad(side, "timm.model", f"must be a non-empty string, got {model!r}")
    if model.startswith(("hf-hub:", "hf_hub:")) or ":" in model:
        raise _bad(
            side,
            "timm.model",
            f"{model!r} names a hub download; nothing is downloaded: give the architecture "
            "name and kwargs of the recipe (docs/features.md) and the weights as the encoder file",
        )
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _bad(side, "timm.kwargs", f"must be an object, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key in TIMM_REFUSED_KWARGS:
            problem = "not allowed: the weights come from the encoder file, nothing is downloaded"
            raise _bad(side, f"timm.kwargs.{key}", problem)
        _json_value(side, f"timm.kwargs.{key}", value)
    drop = raw.get("drop_keys", [])
    if not isinstance(drop, list) or not all(isinstance(k, str) and k for k in drop):
        raise _bad(side, "timm.drop_keys", f"must be a list of key prefixes, got {drop!r}")
    return TimmSpec(
        model=model,
        kwargs=dict(kwargs),
        forward=_choice(side, "timm.forward", raw.get("forward", "forward"), TIMM_FORWARDS),
        drop_keys=tuple(drop),
    )


def parse_spec(raw: Any, side: Path) -> EncoderSpec:
    """Validate a sidecar's parsed JSON; every problem names ``side`` and the key.

    Raises
    ------
    ModelError
        Not an object, a required key missing, an unknown key, or a value of the wrong kind.

    Examples
    --------
    >>> s = parse_spec({"name": "t", "input_size": 32, "mpp": None, "mean": [0, 0, 0],
    ...                 "std": [1, 1, 1], "output_dim": 8}, Path("t.json"))
    >>> (s.patch_size, s.precision, s.pooling)
    (32, 'fp32', 'none')
    """
    if not isinstance(raw, dict):
        raise ModelError(str(side), f"sidecar must be a JSON object, got {type(raw).__name__}")
    for key in REQUIRED:
        if key not in raw:
            raise _bad(side, key, "missing (required: " + ", ".join(REQUIRED) + ")")
    for key in raw:
        if key not in REQUIRED + OPTIONAL:
            raise _bad(side, key, "unknown key (known: " + ", ".join(REQUIRED + OPTIONAL) + ")")
    if not isinstance(raw["name"], str) or not raw["name"].strip():
        raise _bad(side, "name", f"must be a non-empty string, got {raw['name']!r}")
    mpp = raw["mpp"]
    if mpp is not None and (
        isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not mpp > 0
    ):
        raise _bad(side, "mpp", f"must be a positive number (µm/px) or null, got {mpp!r}")
    prefix = raw.get("prefix_tokens", 1)
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise _bad(side, "prefix_tokens", f"must be an integer >= 0, got {prefix!r}")
    return EncoderSpec(
        name=raw["name"],
        input_size=_positive_int(side, "input_size", raw["input_size"]),
        mpp=None if mpp is None else float(mpp),
        mean=_triple(side, "mean", raw["mean"], positive=False),
        std=_triple(side, "std", raw["std"], positive=True),
        output_dim=_positive_int(side, "output_dim", raw["output_dim"]),
        precision=_choice(side, "precision", raw.get("precision", "fp32"), PRECISIONS),
        pooling=_choice(side, "pooling", raw.get("pooling", "none"), POOLINGS),
        patch_size=_positive_int(side, "patch_size", raw.get("patch_size", raw["input_size"])),
        prefix_tokens=prefix,
        interpolation=_choice(
            side, "interpolation", raw.get("interpolation", "bilinear"), INTERPOLATIONS
        ),
        timm=None if "timm" not in raw else parse_timm(raw["timm"], side),
    )


def read_spec(encoder: Path) -> tuple[EncoderSpec, Path]:
    """The validated sidecar of an encoder file (``enc.pt.json``, else ``enc.json``).

    Raises
    ------
    ModelError
        The encoder file or its sidecar is missing, or the sidecar is invalid.
    """
    if not encoder.is_file():
        raise ModelError(str(encoder), "no such encoder file")
    side = sidecar_path(encoder)
    if not side.exists():
        names = f"{encoder.name}.json or {encoder.with_suffix('.json').name}"
        msg = f"no sidecar JSON beside the encoder (expected {names}; see docs/features.md)"
        raise ModelError(str(encoder), msg)
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(str(side), f"unreadable sidecar JSON: {one_line(exc)}") from exc
    return parse_spec(raw, side), side
