"""Models: the built-in offline models and TorchScript files with a preprocessing sidecar.

A model maps a batch of uint8 RGB windows (n, k, k, 3) to float32 outputs, either a vector per
window (n, C) or a spatial map (n, C, h, w). Nothing here downloads anything; ``torch`` is
imported only when a TorchScript model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ConfigError, ModelError, one_line
from .precision import PRECISIONS
from .program import load_program, load_torchscript

BUILTIN_PREFIX = "builtin:"
DEVICES = ("auto", "cpu", "cuda")

# Ruifrok & Johnston (2001) stain vectors (optical density per RGB channel), rows normalised.
_STAINS = np.array(
    [[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]], dtype=np.float64
)
_STAINS /= np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS)
_OD_LUT = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)


class Model(Protocol):
    """What the collector needs of a model."""

    source: str
    output_names: list[str]
    output_shape: tuple[int, ...]

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Outputs (n, *output_shape) float32 for uint8 windows (n, k, k, 3)."""
        ...

    def identity(self) -> str:
        """A string that changes whenever the model's outputs could change."""
        ...


def channel_sums(windows: np.ndarray) -> np.ndarray:
    """Exact per-window R, G, B sums (n, 3) of uint8 windows (n, h, w, 3), as float64.

    Reduces rows first over contiguous memory with integer accumulation: about 20x faster than
    ``mean(axis=(1, 2))`` on strided channels, and exact.

    Examples
    --------
    >>> channel_sums(np.full((2, 3, 4, 3), 7, np.uint8)).tolist()[0]
    [84.0, 84.0, 84.0]
    """
    n, h, w, c = windows.shape
    per_row = windows.reshape(n, h, w * c).sum(axis=1, dtype=np.uint32)
    return per_row.reshape(n, w, c).sum(axis=1, dtype=np.uint64).astype(np.float64)


@dataclass
class MeanRGB:
    """``builtin:mean-rgb``: mean R, G, B (0-255) of each window.

    A diagnostic: every row can be checked against an independent read of its coordinates.
    """

    source: str = "builtin:mean-rgb"
    output_names: list[str] = field(default_factory=lambda: ["mean_r", "mean_g", "mean_b"])
    output_shape: tuple[int, ...] = (3,)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return (channel_sums(windows) / (windows.shape[1] * windows.shape[2])).astype(np.float32)

    def identity(self) -> str:
        return self.source


@dataclass
class StainDensity:
    """``builtin:stain``: mean hematoxylin and eosin density by colour deconvolution.

    Uses Ruifrok & Johnston's H&E-DAB vectors; deconvolution is linear in optical density, so
    the mean density of a window is the deconvolution of its mean optical density.
    """

    source: str = "builtin:stain"
    output_names: list[str] = field(default_factory=lambda: ["hematoxylin", "eosin"])
    output_shape: tuple[int, ...] = (2,)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        n = windows.shape[0]
        # Mean optical density from per-channel histograms: 4x faster than a float LUT image.
        mean_od = np.empty((n, 3), dtype=np.float64)
        pixels = windows.shape[1] * windows.shape[2]
        for i in range(n):
            for c in range(3):
                counts = np.bincount(windows[i, :, :, c].ravel(), minlength=256)
                mean_od[i, c] = counts @ _OD_LUT.astype(np.float64) / pixels
        conc = mean_od @ _UNMIX
        return np.maximum(conc[:, :2], 0).astype(np.float32)

    def identity(self) -> str:
        return self.source


BUILTINS = {"mean-rgb": MeanRGB, "stain": StainDensity}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is usable, else ``cpu``; ``cuda:K`` as given.

    Which GPU a bare ``cuda`` means is decided by the caller: ``wsiproc infer`` claims a free
    one (:func:`wsiproc.gpus.claim_process_gpu`); elsewhere it is torch's current device.
    """
    index = device.partition(":")[2] if device.startswith("cuda:") else None
    if device not in DEVICES and not (index and index.isdigit()):
        raise ConfigError("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device != "auto":
            raise ConfigError("device", f"{device} requested but torch is not installed") from None
        return "cpu"
    if index is not None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index) >= count:
            raise ConfigError("device", f"{device} requested but {count} CUDA devices are visible")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError("device", "cuda requested but no CUDA device is available")
    return "cpu"


def load_model(
    source: str,
    *,
    kernel_px: int,
    device: str = "auto",
    precision: str = "fp32",
    compile_cache: Path | None = None,
    batch_size: int = 32,
) -> Model:
    """Load ``builtin:<name>`` or a TorchScript file (with optional ``<file>.json`` sidecar).

    ``precision`` may be ``auto``: a TorchScript model resolves it for its device
    (:func:`wsiproc.precision.resolve_precision`) and keeps the result as ``.precision``;
    built-ins compute in numpy whatever the precision. ``compile_cache`` (a directory) runs a
    ``torch.export`` program AOT-compiled for ``batch_size`` (:mod:`wsiproc.compiled`).
    """
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name not in BUILTINS:
            known = ", ".join(BUILTIN_PREFIX + k for k in BUILTINS)
            raise ModelError(source, f"unknown built-in model (known: {known})")
        if compile_cache is not None:
            raise ConfigError("compile", f"{source} runs in numpy; only .pt2 programs compile")
        return BUILTINS[name]()
    return TorchScriptModel(
        Path(source),
        kernel_px=kernel_px,
        device=resolve_device(device),
        precision=precision,
        compile_cache=compile_cache,
        batch_size=batch_size,
    )


def sidecar_path(model_path: Path) -> Path:
    """``model.pt`` -> ``model.pt.json``, else ``model.json``; the first that exists wins."""
    first = model_path.with_name(model_path.name + ".json")
    return first if first.exists() else model_path.with_suffix(".json")


MPP_TOLERANCE = 0.02
"""A processing mpp within 2% of the model's training mpp counts as the same."""


def declared_mpp(source: str) -> float | None:
    """The µm/px a model file's sidecar says it was trained at (key ``mpp``), without loading
    the model (so a mismatch is refused before any work); None for built-ins and sidecars
    without it.

    Raises
    ------
    ModelError
        The sidecar is unreadable or its ``mpp`` is not a positive number.
    """
    if source.startswith(BUILTIN_PREFIX):
        return None
    side = sidecar_path(Path(source))
    if not side.exists():
        return None
    try:
        value = json.loads(side.read_text()).get("mpp")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(str(side), f"unreadable model sidecar JSON: {one_line(exc)}") from exc
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ModelError(str(side), f"mpp must be a positive number (µm/px), got {value!r}")
    return float(value)


def check_mpp(source: str, model_mpp: float | None, proc_mpp: float | None, slide: str) -> None:
    """Refuse a processing resolution the model was not trained at (beyond 2%).

    Raises
    ------
    ConfigError
        Naming both resolutions and the two ways out.
    """
    if model_mpp is None or proc_mpp is None:
        return
    if abs(proc_mpp / model_mpp - 1) <= MPP_TOLERANCE:
        return
    raise ConfigError(
        "--model",
        f"{source} was trained at {model_mpp:g} µm/px, but {slide} would be processed at "
        f"{proc_mpp:.4g} µm/px; process at --mpp {model_mpp:g} (workflow: level.mpp), or "
        "accept the mismatch with --allow-mpp-mismatch (model.allow_mpp_mismatch: true)",
    )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Sha256Beside:
    """:func:`file_sha256` of a file, computed in a daemon thread while the caller loads the
    same file; :meth:`result` waits for it.

    Why: a model's file is read twice, once by its loader and once for the digest that the
    resume fingerprint and the feature files record. Side by side, the second reader finds
    the pages the first one brought in and the hashing (hashlib releases the GIL) runs on
    another core: for a 4.5 GB foundation-model checkpoint that is seconds per job. A daemon
    thread, so a load that fails does not wait for the hash before its one-line error.
    """

    def __init__(self, path: Path) -> None:
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(path,), name="wsiproc-sha256", daemon=True
        )
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._value = file_sha256(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> str:
        """The hex digest (the reading error, if the file could not be read)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class TorchScriptModel:
    """A TorchScript file (or a ``torch.export`` ``.pt2`` program) plus its JSON sidecar.

    Sidecar keys (all optional): ``mpp`` (µm/px the model was trained at: the processing
    resolution must match it), ``input_size`` (px; windows are resized to it, default the
    window size), ``mean``/``std`` (per channel, on 0-1 pixels; default 0 and 1),
    ``activation`` (``softmax``, ``sigmoid`` or ``none``), ``output_names`` (C names).
    Weights, activations and input normalisation run in ``precision`` (resolved, kept as
    ``.precision``: :mod:`wsiproc.precision`); outputs are float32.
    Lives in the collector process; not picklable.
    """

    def __init__(
        self,
        path: Path,
        *,
        kernel_px: int,
        device: str,
        precision: str,
        compile_cache: Path | None = None,
        batch_size: int = 32,
    ) -> None:
        import torch

        from .precision import resolve_precision, torch_dtype

        self.source = str(path)
        self.path = path
        if not path.exists():
            raise ModelError(self.source, "no such model file")
        side = sidecar_path(path)
        self.sidecar: dict[str, Any] = {}
        if side.exists():
            try:
                self.sidecar = json.loads(side.read_text())
            except (OSError, ValueError) as exc:
                raise ModelError(str(side), f"unreadable model sidecar JSON: {exc}") from exc
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is not None:
            # Implicit allocations (pinned memory, cuDNN, autocast) use the current device:
            # without this, every process would also open a context on cuda:0.
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(precision, device)
        self.dtype = torch_dtype(self.precision)
        self.kernel_px = kernel_px
        self.input_size = int(self.sidecar.get("input_size") or kernel_px)
        self.activation = self.sidecar.get("activation", "none")
        if self.activation not in ("softmax", "sigmoid", "none"):
            raise ModelError(
                str(side), f"activation must be softmax, sigmoid or none, got {self.activation!r}"
            )
        mean = self.sidecar.get("mean", [0.0, 0.0, 0.0])
        std = self.sidecar.get("std", [1.0, 1.0, 1.0])
        # (x / 255 - mean) / std as one multiply-add, its constants rounded once to the dtype.
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        self._scale = (1.0 / (255.0 * std_t)).to(device=self.device, dtype=self.dtype)
        self._shift = (-mean_t / std_t).to(device=self.device, dtype=self.dtype)
        digest = Sha256Beside(path)
        self.compiled: dict[str, Any] | None = None
        if compile_cache is not None:
            from .compiled import compiled_forward, require_program

            require_program(path)
            self._sha = digest.result()  # part of the package's key
            forward = compiled_forward(
                lambda: self._prepare(load_program(path, batch_size)),  # only to build a package
                model_sha256=self._sha,
                precision=self.precision,
                batch_size=batch_size,
                input_size=self.input_size,
                device=self.device,
                cache_dir=compile_cache,
                source=self.source,
            )
            self.module, self.compiled = forward, forward.record.to_dict()
            # Checked against the eager program when the package was built: no probe (one
            # probe would cost a whole compiled batch).
            shape: tuple[int, ...] = (1, *forward.record.output_shape)
        else:
            if path.suffix == ".pt2":
                module = load_program(path, batch_size)
            else:
                module = load_torchscript(path, self.device)
            self.module = self._prepare(module)
            self._sha = digest.result()
            probe = self._forward(np.full((1, kernel_px, kernel_px, 3), 255, dtype=np.uint8))
            shape = tuple(probe.shape)
        if len(shape) not in (2, 4):
            raise ModelError(self.source, f"output must be (n, C) or (n, C, h, w), got {shape}")
        self.output_shape = tuple(int(s) for s in shape[1:])
        names = self.sidecar.get("output_names")
        c = self.output_shape[0]
        if names is None:
            names = [f"out_{i}" for i in range(c)]
        if len(names) != c:
            raise ModelError(str(side), f"output_names has {len(names)} names, model outputs {c}")
        self.output_names = [str(n) for n in names]

    def _prepare(self, module: Any) -> Any:
        """The module cast (and, for TorchScript, frozen) for this model's precision."""
        import torch

        from .precision import prepare_module

        size = self.input_size
        example = torch.full((1, 3, size, size), 0.5).contiguous(memory_format=torch.channels_last)
        return prepare_module(module, self.precision, self.device, example, source=self.source)

    def identity(self) -> str:
        ident: dict[str, Any] = {"sha256": self._sha, "sidecar": self.sidecar}
        if self.compiled is not None:  # compiled kernels round differently from eager ones
            ident["compiled_batch"] = self.compiled["batch_size"]
        return json.dumps(ident, sort_keys=True)

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows))
            if cuda:
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2)
            if self.dtype == torch.float32:  # the exact fp32 arithmetic of every release
                x = x.float().div_(255.0).sub_(self._mean).div_(self._std)  # in place
            else:  # uint8 is exact in bf16/fp16: one multiply-add, in the model's dtype
                x = x.to(self.dtype).mul_(self._scale).add_(self._shift)
            if self.input_size != x.shape[-1]:
                # Antialiased bilinear has no bf16 CPU kernel: resize in fp32, then cast back.
                x = F.interpolate(
                    x.float(),
                    size=(self.input_size, self.input_size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                ).to(self.dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            y = self.module(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = y.float()
            if self.activation == "softmax":
                y = torch.softmax(y, dim=1)
            elif self.activation == "sigmoid":
                y = torch.sigmoid(y)
            return y.cpu().numpy()

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        out = self._forward(windows)
        if out.shape[1:] != self.output_shape:
            raise ModelError(self.source, f"output shape changed to {out.shape[1:]}")
        return out.astype(np.float32, copy=False)


def flat_output_names(model: Model) -> list[str]:
    """CSV column names of a model's outputs (spatial maps flattened as ``name_i_j``)."""
    from .table import spatial_output_names

    if len(model.output_shape) == 1:
        return list(model.output_names)
    _, h, w = model.output_shape
    return spatial_output_names(model.output_names, h, w)


def output_width(model: Model) -> int:
    """Number of CSV output columns."""
    return int(math.prod(model.output_shape))
