"""Numeric precision: which one a run uses (``auto`` resolved once) and how a module is made
to run in it.

Separate from :mod:`wsiproc.models` because every torch path (window models, patch encoders)
needs the same rule: a reduced precision is real only if the weights and activations are cast
*before* TorchScript freezing folds them into constants (autocast around a module that
``optimize_for_inference`` already turned into fp32 MKLDNN ops runs nothing in bf16).
``torch`` is imported only inside the functions that need it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, ModelError, one_line

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
"""What ``--precision`` accepts; ``auto`` is resolved by :func:`resolve_precision`."""

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs with bf16 matrix/dot-product instructions."""

CPUINFO = "/proc/cpuinfo"


def cpu_bf16_flags(cpuinfo_text: str | None = None) -> set[str]:
    """The fast-bf16 flags (:data:`FAST_BF16_FLAGS`) this CPU reports.

    Parameters
    ----------
    cpuinfo_text
        The text of ``/proc/cpuinfo``; None reads it (an unreadable file, e.g. on macOS,
        counts as no flags).

    Examples
    --------
    >>> sorted(cpu_bf16_flags("processor : 0\\nflags : fpu sse2 avx512_bf16 amx_bf16 amx_tile\\n"))
    ['amx_bf16', 'avx512_bf16']
    >>> cpu_bf16_flags("flags : fpu sse2 avx2\\n")
    set()
    """
    if cpuinfo_text is None:
        try:
            with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            return set()
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            found |= set(value.split()) & set(FAST_BF16_FLAGS)
    return found


def cpu_has_fast_bf16(cpuinfo_text: str | None = None) -> bool:
    """True where the CPU reports AMX-BF16 or AVX512-BF16 (where bf16 beats fp32).

    Examples
    --------
    >>> cpu_has_fast_bf16("flags : avx2 amx_bf16\\n"), cpu_has_fast_bf16("flags : avx2\\n")
    (True, False)
    """
    return bool(cpu_bf16_flags(cpuinfo_text))


def resolve_precision(precision: str, device: str, *, cpuinfo_text: str | None = None) -> str:
    """The precision a run uses on ``device`` (``cpu``, ``cuda`` or ``cuda:K``).

    ``auto`` becomes ``bf16`` where the CPU has AMX-BF16/AVX512-BF16 or the CUDA device
    supports bf16, else ``fp32`` (exact); explicit values are kept. Resolved once per run:
    the result is what windows.json records and what the resume fingerprint holds.

    Parameters
    ----------
    precision
        One of :data:`PRECISIONS`.
    device
        The resolved device, never ``auto``.
    cpuinfo_text
        ``/proc/cpuinfo`` text for the CPU decision (None reads the file).

    Raises
    ------
    ConfigError
        An unknown precision, or ``fp16`` on a CPU (slower and less exact than bf16 there).

    Examples
    --------
    >>> resolve_precision("auto", "cpu", cpuinfo_text="flags : avx2 amx_bf16\\n")
    'bf16'
    >>> resolve_precision("auto", "cpu", cpuinfo_text="flags : avx2\\n")
    'fp32'
    >>> resolve_precision("bf16", "cpu")
    'bf16'
    """
    if precision not in PRECISIONS:
        problem = f"must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        raise ConfigError("precision", problem)
    kind = device.partition(":")[0]
    if precision == "fp16" and kind != "cuda":
        problem = f"fp16 runs only on a CUDA device, not {device}; use bf16 or fp32 on a CPU"
        raise ConfigError("precision", problem)
    if precision != "auto":
        return precision
    if kind == "cuda":
        return "bf16" if cuda_supports_bf16(device) else "fp32"
    return "bf16" if cpu_has_fast_bf16(cpuinfo_text) else "fp32"


def cuda_supports_bf16(device: str) -> bool:
    """True where ``device``'s GPU computes in bf16 natively (compute capability >= 8.0)."""
    import torch

    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def torch_dtype(precision: str) -> Any:
    """``fp32``/``bf16``/``fp16`` -> ``torch.float32``/``bfloat16``/``float16``.

    ``auto`` must be resolved first (:func:`resolve_precision`): passing it is a programmer
    error (ValueError).
    """
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"unresolved or unknown precision {precision!r}")
    return dtypes[precision]


def prepare_module(
    module: Any, precision: str, device: Any, example: Any, *, source: str = "model"
) -> Callable[..., Any]:
    """A module made to run its weights and activations in ``precision`` on ``device``.

    * TorchScript: weights cast to the dtype, *then* frozen (constants folded in that dtype);
      ``optimize_for_inference`` only for fp32, where its MKLDNN rewrite helps and cannot
      undo a cast.
    * ``torch.export`` program (or its ``.module()``) and plain ``nn.Module``: cast.

    The caller feeds inputs already in the dtype (``example``'s dtype is ignored: it is cast)
    and converts outputs to float32.

    Parameters
    ----------
    module
        A ``torch.jit.ScriptModule``, ``torch.export.ExportedProgram`` or ``torch.nn.Module``.
    precision
        A resolved precision (not ``auto``).
    device
        Where it runs (``torch.device`` or its string).
    example
        An input batch (n, C, H, W) of the shape the caller will feed; run once, so a module
        that cannot run in the dtype fails here with a :class:`ModelError`, not mid-slide.
    source
        The model's name (file path) for that error.

    Raises
    ------
    ModelError
        The module does not run in ``precision``.
    """
    import torch

    dtype = torch_dtype(precision)
    device = torch.device(device)
    if isinstance(module, torch.export.ExportedProgram):
        module = module.module()
    if isinstance(module, torch.jit.ScriptModule):
        prepared = _prepare_torchscript(module, dtype, device)
    else:
        prepared = module.to(device=device, dtype=dtype)
        if not isinstance(prepared, torch.fx.GraphModule):  # exported: eval mode at export
            prepared.eval()
    x = example.to(device=device, dtype=dtype)
    try:
        with torch.inference_mode():
            prepared(x)
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot run in this dtype
        problem = f"does not run in {precision}: {one_line(exc)}"
        raise ModelError(source, problem) from exc
    return prepared


def _prepare_torchscript(module: Any, dtype: Any, device: Any) -> Any:
    """Cast, then freeze; optimise for inference only in fp32 (freezing is best-effort)."""
    import torch

    module = module.to(device=device, dtype=dtype).eval()
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            frozen = torch.jit.freeze(module)
            if dtype == torch.float32:
                frozen = torch.jit.optimize_for_inference(frozen)
    except Exception:  # noqa: BLE001 - freezing is an optimisation; fall back to the module
        return module
    return frozen
