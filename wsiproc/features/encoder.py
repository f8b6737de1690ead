"""Patch encoders: a TorchScript / ``torch.export`` file or a timm weights file with its
sidecar, or the built-in one.

An encoder maps uint8 RGB patches (n, p, p, 3) to float32 embeddings (n, D). Conversion,
normalisation and resizing run on the encoder's device in its precision; embeddings leave as
float32. It implements the :class:`wsiproc.models.Model` protocol, so the engine's
``ModelCollector`` runs it unchanged. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..models import BUILTIN_PREFIX, Sha256Beside
from ..precision import prepare_module, resolve_precision, torch_dtype
from ..program import load_program, load_torchscript
from .sidecar import EncoderSpec, read_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BUILTIN_TINY = EncoderSpec(
    name="builtin:tiny",
    input_size=224,
    mpp=0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output_dim=128,
)
BUILTINS = {"builtin:tiny": BUILTIN_TINY}


def builtin_module() -> Any:
    """The ``builtin:tiny`` network with weights drawn from a fixed seed (no download).

    A 16-px patchify convolution (as a ViT-B/16 stem, 32 channels), a 3x3 convolution to 64
    channels, GELUs, then mean and max pooling: 128 dims that respond to colour and texture,
    enough for the demo and tests, and cheap on a CPU.
    """
    import torch
    from torch import nn

    class TinyEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 16, stride=16)
            self.mix = nn.Conv2d(32, 64, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = nn.functional.gelu(self.stem(x))
            h = nn.functional.gelu(self.mix(h))
            return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    module = TinyEncoder().eval()
    gen = torch.Generator().manual_seed(15)
    with torch.no_grad():
        for param in module.parameters():
            fan_in = math.prod(param.shape[1:]) if param.ndim > 1 else param.shape[0]
            param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
    return module


def _module_sha256(module: Any) -> str:
    """Hash of a module's weights, the built-in encoder's counterpart of a file hash."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Encoder:
    """A loaded patch encoder on one device, in one precision.

    Lives in the collector process (the one that called the engine) and owns the module and
    its device memory; not picklable, not thread-safe. ``source`` is what the user named,
    ``spec`` the validated sidecar, ``precision`` the resolved one (never ``auto``).
    """

    def __init__(
        self,
        source: str,
        *,
        device: str = "cpu",
        precision: str | None = None,
        compile_cache: Path | None = None,
        batch_size: int = 32,
    ) -> None:
        import torch

        self.source = source
        if source.startswith(BUILTIN_PREFIX):
            if source not in BUILTINS:
                raise ModelError(source, f"unknown built-in encoder (known: {', '.join(BUILTINS)})")
            self.spec, self.sidecar = BUILTINS[source], None
            module: Any = builtin_module()
            self.sha256 = _module_sha256(module)
        else:
            path = Path(source)
            self.spec, self.sidecar = read_spec(path)
            digest = Sha256Beside(path)  # hashed while the file loads
            if self.spec.timm is not None:  # a timm architecture + this weights file
                from .timm_encoder import check_usable, load_timm

                check_usable(path, self.spec, compiling=compile_cache is not None)
                module = load_timm(path, self.spec, self.sidecar)
            else:
                module = None if compile_cache is not None else _load_file(path, batch_size)
            self.sha256 = digest.result()
        requested = precision or self.spec.precision
        if requested not in ("fp32", "bf16", "fp16", "auto"):
            raise ConfigError("precision", f"must be fp32, bf16, fp16 or auto, got {requested!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(requested, device)
        self.dtype = torch_dtype(self.precision)
        self.input_size = self.spec.input_size
        example = torch.zeros(1, 3, self.input_size, self.input_size, dtype=self.dtype)
        self.compiled: dict[str, Any] | None = None
        if compile_cache is None:
            self.module = prepare_module(
                module, self.precision, self.device, example, source=source
            )
        else:
            from ..compiled import compiled_forward, require_program

            if self.sidecar is None:
                raise ConfigError("compile", f"{source} is built in; only .pt2 programs compile")
            require_program(Path(source))

            def load_eager() -> Any:  # only to build a package
                loaded = _load_file(Path(source), batch_size)
                return prepare_module(loaded, self.precision, self.device, example, source=source)

            forward = compiled_forward(
                load_eager,
                model_sha256=self.sha256,
                precision=self.precision,
                batch_size=batch_size,
                input_size=self.input_size,
                device=self.device,
                cache_dir=compile_cache,
                source=source,
            )
            self.module, self.compiled = forward, forward.record.to_dict()
        self._mean = torch.tensor(self.spec.mean, dtype=self.dtype, device=self.device)
        self._std = torch.tensor(self.spec.std, dtype=self.dtype, device=self.device)
        self._mean, self._std = self._mean.view(1, 3, 1, 1), self._std.view(1, 3, 1, 1)
        d = self.spec.output_dim
        self.output_shape: tuple[int, ...] = (d,)
        self.output_names = [f"feat_{i}" for i in range(d)]
        if self.compiled is None:  # a compiled one was probed when built; every batch's
            self._probe()  # dimension and finiteness are checked anyway

    def __repr__(self) -> str:
        return (
            f"Encoder({self.source!r}, name={self.spec.name!r}, dim={self.spec.output_dim}, "
            f"device={str(self.device)!r}, precision={self.precision!r})"
        )

    def _where(self, key: str) -> str:
        """The file to name for a sidecar key (the source itself for built-ins)."""
        return f"{self.sidecar}: key {key!r}" if self.sidecar else f"{self.source}: {key}"

    def _probe(self) -> None:
        """Run two white patches: refuse a model whose output disagrees with the sidecar."""
        white = np.full((2, self.spec.patch_size, self.spec.patch_size, 3), 255, np.uint8)
        self(white)

    def identity(self) -> str:
        """Changes whenever the embeddings could (weights, sidecar, precision)."""
        spec = self.spec.to_dict()
        ident = {"sha256": self.sha256, "spec": spec, "precision": self.precision}
        if self.compiled is not None:  # compiled kernels round differently from eager ones
            ident["compiled_batch"] = self.compiled["batch_size"]
        return json.dumps(ident)

    def _pool(self, y: Any) -> Any:
        """(n, D) from the module's raw output, by the sidecar's pooling."""
        import torch

        if isinstance(y, (tuple, list)):  # a file's (last_hidden_state, pooler_output, ...);
            y = y[0]  # timm feature lists arrive as their last map (timm_encoder.wrap)
        if not isinstance(y, torch.Tensor):
            problem = f"returned a {type(y).__name__}, expected a tensor"
            raise ModelError(self.source, problem)
        pooling = self.spec.pooling
        if y.ndim == 2:
            return y
        if y.ndim == 3 and pooling != "none":
            cls = y[:, 0]
            mean = y[:, self.spec.prefix_tokens :].mean(dim=1)
            return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[pooling]
        if y.ndim == 4 and pooling == "mean":
            return y.mean(dim=(2, 3))
        shape = tuple(y.shape)
        raise ModelError(
            self._where("pooling"),
            f"the model returns shape {shape}; set pooling to cls, mean or cls+mean for tokens "
            "(n, T, D), or mean for maps (n, D, h, w)",
        )

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Embeddings (n, D) float32 of uint8 patches (n, p, p, 3).

        Raises
        ------
        ModelError
            The dimension disagrees with the sidecar's ``output_dim``, or an embedding holds NaN
            or infinity.
        """
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            # In place, the same arithmetic: one batch-sized tensor instead of three (a 448-px
            # batch of 32 is 77 MB in fp32).
            x = x.permute(0, 3, 1, 2).to(self.dtype).div_(255.0).sub_(self._mean).div_(self._std)
            if x.shape[-1] != self.input_size:
                x = F.interpolate(
                    x,
                    size=(self.input_size, self.input_size),
                    mode=self.spec.interpolation,
                    antialias=True,
                    align_corners=False,
                )
            x = x.contiguous(memory_format=torch.channels_last)
            y = self._pool(self.module(x)).float()
            out = y.cpu().numpy()
        if out.shape[1] != self.spec.output_dim:
            raise ModelError(
                self._where("output_dim"),
                f"says {self.spec.output_dim}, but {self.source} returns {out.shape[1]} dims",
            )
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            raise ModelError(
                self.source,
                f"{int((~finite).sum())} of {len(out)} embeddings hold NaN or infinity "
                f"(precision {self.precision}); nothing written",
            )
        return out


def _load_file(path: Path, batch_size: int) -> Any:
    """A TorchScript module or a ``torch.export`` program (``.pt2``, one that takes any batch up
    to ``batch_size``) on the CPU, in eval mode."""
    if path.suffix == ".pt2":
        return load_program(path, batch_size)
    return load_torchscript(path, "cpu")


def encoder_spec(source: str) -> EncoderSpec:
    """The sidecar of ``source`` (or a built-in's spec) without loading torch or the weights."""
    if source.startswith(BUILTIN_PREFIX):
        if source not in BUILTINS:
            raise ModelError(source, f"unknown built-in encoder (known: {', '.join(BUILTINS)})")
        return BUILTINS[source]
    return read_spec(Path(source))[0]
