"""Ahead-of-time compiled forwards for ``torch.export`` programs (AOTInductor), cached on disk.

Why: inductor's fused, weight-prepacked kernels beat TorchScript's frozen graph (the
benchmark CNN streamed 1.15x faster through the package than through TorchScript on this
project's CPU, as fast as JIT ``torch.compile``; docs/performance.md), but a cold compile
costs 12-25 s: longer than a small slide's whole run. So the compiled package is built once
per (program, precision, batch, input size, device, torch release, CPU) into a cache
directory, and every later slide of a cohort, in any process, loads it (seconds, not minutes).

AOTInductor packages are compiled for one memory layout and do not check it: a tensor in
another layout returns wrong numbers without an error, so :class:`CompiledForward` always
feeds channels-last. The batch dimension is compiled dynamic (1 to the batch size), so the
partial batch that ends every checkpoint group runs at its own size: padded to a full batch,
as the first packages were, those tails cost 10-20% of a slide's compute.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelError, one_line

# Eager and compiled forwards of the same fp32 program differ by float rounding only; more
# than this (relative to the outputs' scale) means the compiled package computes something
# else, and it is refused rather than used.
AGREEMENT_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}


def default_cache_dir() -> Path:
    """``$WSIPROC_CACHE_DIR/compiled``, else ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    base = os.environ.get("WSIPROC_CACHE_DIR")
    if base:
        return Path(base) / "compiled"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "wsiproc" / "compiled"


def machine_identity(device: Any) -> str:
    """What the generated code was compiled for: the GPU's model, or the CPU's model and ISA
    flags (a package built on an AVX-512 node must not run on an AVX2 node of the cluster)."""
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}:{torch.version.cuda}"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"cpu:{platform.machine()}:{platform.processor()}"
    model = flags = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = " ".join(sorted(value.split()))
    return f"cpu:{platform.machine()}:{model}:{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def require_program(path: Path) -> None:
    """Only ``torch.export`` programs compile: TorchScript is a graph inductor cannot read.

    Raises
    ------
    ConfigError
        ``path`` is not a ``.pt2`` file.
    """
    if path.suffix != ".pt2":
        raise ConfigError(
            "compile",
            f"{path} is TorchScript; only torch.export programs (.pt2) compile "
            "(export the model with torch.export, or run without --compile)",
        )


@dataclass(frozen=True)
class CompileRecord:
    """How the compiled forward came to be, for windows.json and the QC page."""

    package: str
    cache: str  # "hit": loaded a package built before; "miss": built it now
    seconds: float  # compile (on a miss) plus load
    batch_size: int
    max_abs_vs_eager: float | None  # checked when built; None when loaded from the cache
    output_shape: tuple[int, ...]  # of one input, as the eager program returned it when built
    freezing: bool | None = None  # which of the two builds was kept (the faster one)
    batch_seconds: dict[str, float] | None = None  # each build's full batch, when it was built

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(record: dict[str, Any] | None) -> str:
    """One line for the QC page: how the model ran.

    Examples
    --------
    >>> describe(None)
    'no (eager)'
    >>> describe({"cache": "hit", "seconds": 0.41, "batch_size": 32, "freezing": True})
    'AOTInductor, frozen, batch 1-32 (loaded from the cache in 0.41 s)'
    """
    if not record:
        return "no (eager)"
    how = "loaded from the cache" if record["cache"] == "hit" else "built"
    kind = {True: "frozen, ", False: "not frozen, "}.get(record.get("freezing"), "")
    return f"AOTInductor, {kind}batch 1-{record['batch_size']} ({how} in {record['seconds']:g} s)"


class CompiledForward:
    """A callable like the module it replaces, for any batch of 1..``batch_size`` images
    (n, 3, h, w), laid out channels-last as compiled."""

    def __init__(self, runner: Any, batch_size: int, record: CompileRecord) -> None:
        self.runner, self.batch_size, self.record = runner, batch_size, record

    def __call__(self, x: Any) -> Any:
        import torch

        n = x.shape[0]
        if n > self.batch_size:  # never from the engine; kept correct for direct callers
            parts = [self(x[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
            return torch.cat(parts)
        y = self.runner(x.contiguous(memory_format=torch.channels_last))
        return y[0] if isinstance(y, (tuple, list)) else y


def compiled_forward(
    load_eager: Callable[[], Any],
    *,
    model_sha256: str,
    precision: str,
    batch_size: int,
    input_size: int,
    device: Any,
    cache_dir: Path,
    source: str,
) -> CompiledForward:
    """The program compiled for ``batch_size`` images of ``input_size`` px: loaded from
    ``cache_dir``, or built there now from ``load_eager()`` (the prepared ``torch.export``
    program: cast, on ``device``), which a cache hit never calls.

    Concurrent jobs of a cohort take a file lock per package: one builds it, the others wait
    and load it. A package is written under a temporary name and renamed, so a killed build
    leaves no half package behind.

    Raises
    ------
    ModelError
        The program cannot be exported for this batch, compiled (no C++ compiler, an
        unsupported operator) or its compiled outputs disagree with the eager ones.
    """
    import torch

    from .precision import torch_dtype

    key = json.dumps(
        {
            "model": model_sha256,
            "precision": precision,
            "batch": batch_size,
            "size": input_size,
            "layout": "channels_last",
            "batch_dim": "dynamic",
            "build": "the faster of frozen and not frozen",
            "machine": machine_identity(device),
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(source, f"cannot create compile cache {cache_dir}: {exc}") from exc
    package = cache_dir / f"{digest}.pt2"
    meta = package.with_suffix(".json")
    t0 = time.perf_counter()
    with open(cache_dir / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entry = _load_entry(package, meta)
        if entry is not None:
            cache = "hit"
            runner, built = entry
        else:
            cache = "miss"
            example = torch.zeros(
                batch_size, 3, input_size, input_size, dtype=torch_dtype(precision), device=device
            ).contiguous(memory_format=torch.channels_last)
            runner, built = _build(load_eager(), example, package, key, source)
    record = CompileRecord(
        package=str(package),
        cache=cache,
        seconds=round(time.perf_counter() - t0, 3),
        batch_size=batch_size,
        max_abs_vs_eager=built["max_abs_vs_eager"] if cache == "miss" else None,
        output_shape=tuple(built["output_shape"]),
        freezing=built.get("freezing"),
        batch_seconds=built.get("batch_seconds"),
    )
    return CompiledForward(runner, batch_size, record)


def _build(
    module: Any, example: Any, package: Path, key: str, source: str
) -> tuple[Any, dict[str, Any]]:
    """Export ``module`` with a dynamic batch (1 to the example's) in the example's layout,
    AOT-compile it twice, frozen and not, keep the faster, check it against the eager module
    at a full and a partial batch, then publish it as ``package`` with what was measured
    beside it: (the loaded runner, that record).

    Why both: inductor's freezing prepacks convolutions for oneDNN with their ReLU and
    residual adds fused (the benchmark CNN: 0.90-0.98 of JIT torch.compile without it,
    0.94-1.00 with), but in AOT mode it moves linear layers from MKL to oneDNN, and a ViT-B/16
    ran at 0.71-0.73 of its eager program frozen against 1.02-1.04 not frozen on this
    project's CPU. Which wins depends on the network and the machine, so the build measures
    it once, for the cache. Both packages stay loaded while they are timed: building one at a
    time was tried and did not lower the peak, which lies inside inductor's compile.
    """
    import torch

    batch = int(example.shape[0])
    tmps = {
        frozen: package.with_name(f".{package.stem}.{os.getpid()}.{int(frozen)}.tmp.pt2")
        for frozen in (True, False)
    }
    try:
        runners: dict[bool, Any] = {}
        try:
            with torch.no_grad():  # freezing applies only with gradients off
                program = torch.export.export(
                    module,
                    (example,),
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=batch)},),
                )
                for frozen, tmp in tmps.items():
                    torch._inductor.aoti_compile_and_package(
                        program, package_path=str(tmp), inductor_configs={"freezing": frozen}
                    )
                    runners[frozen] = load_package(tmp)
        except Exception as exc:  # noqa: BLE001 - any failure: say so, leave the cache clean
            problem = f"cannot compile it with AOTInductor ({one_line(exc)}); run without --compile"
            raise ModelError(source, problem) from exc
        seconds = {frozen: _batch_seconds(runner, example) for frozen, runner in runners.items()}
        frozen = min(seconds, key=seconds.__getitem__)
        runner = runners[frozen]
        agreement, shape = 0.0, ()
        for n in sorted({batch, max(1, batch // 2 - 1)}):  # a full batch and a group's tail
            diff, shape = _check_agreement(module, runner, example[:n], source)
            agreement = max(agreement, diff)
        built = {
            "key": json.loads(key),
            "output_shape": list(shape),
            "max_abs_vs_eager": agreement,
            "freezing": frozen,
            # Unrounded: rounded, two builds of a small model tie and the record would not say
            # which one was faster.
            "batch_seconds": {("frozen" if f else "not frozen"): t for f, t in seconds.items()},
        }
        package.with_suffix(".json").write_text(json.dumps(built, indent=1) + "\n")
        os.replace(tmps[frozen], package)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return runner, built


def _load_entry(package: Path, meta: Path) -> tuple[Any, dict[str, Any]] | None:
    """The cached package's forward and build record, None where there is none or it is
    damaged (truncated, its record unreadable: e.g. a disk cleaned up under it), which is then
    built again: a cache must never be the reason a run fails."""
    if not (package.exists() and meta.exists()):
        return None
    try:
        built = json.loads(meta.read_text())
        return load_package(package), built
    except Exception:  # noqa: BLE001 - any damage: rebuild under the lock
        return None


class _PackageRunner:
    """A package's forward: one image batch in, the loader's flat list of outputs back (what
    ``torch._inductor``'s wrapper returns for a list or tuple; its one tensor for a tensor,
    which :class:`CompiledForward` unwraps alike)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __call__(self, x: Any) -> Any:
        return self.loader.run([x])


def load_package(path: Path) -> Any:
    """A built package's forward, loaded without importing ``torch._inductor``.

    Why: ``torch._inductor.aoti_load_package`` imports the whole compiler (1.2 s on this
    project's CPU) to hand back a thin wrapper around ``torch._C._aoti``'s package loader, and
    in a cohort every job but the first loads a package another job built: that second is
    paid per slide. Where this torch has no such loader, the public function loads it.
    """
    import torch

    loader_type = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_type is None:
        return torch._inductor.aoti_load_package(str(path))
    return _PackageRunner(loader_type(str(path), "model", False, 1, -1))


def _batch_seconds(runner: Any, example: Any) -> float:
    """The best of two timed full batches after a warm-up one: enough to tell builds that
    differ by 10-40% apart, a few seconds once per cache entry."""
    import torch

    x = torch.rand(example.shape).to(dtype=example.dtype, device=example.device)
    x = x.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        for i in range(3):
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            runner(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            if i:
                best = min(best, time.perf_counter() - t0)
    return best


def _check_agreement(
    module: Any, runner: Any, example: Any, source: str
) -> tuple[float, tuple[int, ...]]:
    """Max abs difference between eager and compiled outputs on a fixed random batch of the
    example's shape, and the output shape of one input."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(example.shape, generator=gen).to(dtype=example.dtype, device=example.device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = module(x)
        compiled = runner(x)
    eager = eager[0] if isinstance(eager, (tuple, list)) else eager
    compiled = compiled[0] if isinstance(compiled, (tuple, list)) else compiled
    if compiled.shape != eager.shape:
        raise ModelError(
            source,
            f"its compiled outputs have shape {tuple(compiled.shape)}, the eager ones "
            f"{tuple(eager.shape)}; run without --compile",
        )
    diff = float((eager.float() - compiled.float()).abs().max())
    scale = float(eager.float().abs().max()) or 1.0
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    tolerance = AGREEMENT_TOLERANCE[precision[example.dtype]]
    if not diff <= tolerance * scale:
        raise ModelError(
            source,
            f"its compiled outputs differ from the eager ones by {diff:.3g} (scale {scale:.3g}); "
            "run without --compile",
        )
    return diff, tuple(int(d) for d in eager.shape[1:])
