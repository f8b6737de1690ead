"""The model's best forward throughput per precision, measured apart from the engine's path.

Every way of running the same network is timed on in-memory batches already in the
precision's dtype (channels_last): TorchScript frozen (+ ``optimize_for_inference``) in fp32,
TorchScript cast to bf16 then frozen, the eager module under bf16 autocast, and
``torch.compile`` (inductor) in both precisions where it compiles. The best variant of each
precision is that precision's limit: if the engine's own path were wrong (autocast around an
fp32 MKLDNN graph), the engine would fall below it, which a limit measured through the
engine's path cannot show.

Usage (alone): python benchmarks/forward_limits.py [--batch 32] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _script_variant(path: Path, dtype: Any, *, optimize: bool) -> Callable[[Any], Any]:
    """The TorchScript file cast to ``dtype``, then frozen (and optionally optimised)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval().to(dtype)
        frozen = torch.jit.freeze(module)
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen


def _autocast_variant(eager: Any, dtype: Any) -> Callable[[Any], Any]:
    """The eager fp32 module with its ops autocast to ``dtype``."""
    import torch

    def run(x: Any) -> Any:
        with torch.autocast("cpu", dtype=dtype):
            return eager(x.float())

    return run


def _compiled_variant(eager: Any, dtype: Any) -> Callable[[Any], Any]:
    """``torch.compile`` (inductor) of the eager module cast to ``dtype``, weights frozen."""
    import copy

    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # constant-fold weights, as TorchScript freezing does
    return torch.compile(copy.deepcopy(eager).to(dtype))


def time_variant(fn: Callable[[Any], Any], x: Any, *, repeats: int) -> dict[str, float]:
    """Windows/s of the best of ``repeats`` calls after two warm-up calls (first-call seconds
    kept: for ``torch.compile`` that is the compile time)."""
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(x)
        first_s = time.perf_counter() - t0
        fn(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
    return {"wps": x.shape[0] / best, "batch_s": best, "first_call_s": first_s}


Variant = tuple[str, Callable[[], Callable[[Any], Any]], Any]
"""(precision, a function that prepares the forward, the input batch in its dtype)."""


def variant_table(
    script_path: Path, eager: Any, batch: int, size_px: int, compile_variants: bool = True
) -> dict[str, Variant]:
    """Every way of running the network, by name (the input batch is the same random one)."""
    import torch

    torch.manual_seed(0)
    x32 = torch.rand(batch, 3, size_px, size_px).contiguous(memory_format=torch.channels_last)
    xbf = x32.to(torch.bfloat16)
    variants: dict[str, Variant] = {
        "fp32 TorchScript frozen+optimized": (
            "fp32",
            lambda: _script_variant(script_path, torch.float32, optimize=True),
            x32,
        ),
        "fp32 TorchScript frozen": (
            "fp32",
            lambda: _script_variant(script_path, torch.float32, optimize=False),
            x32,
        ),
        "bf16 TorchScript cast+frozen": (
            "bf16",
            lambda: _script_variant(script_path, torch.bfloat16, optimize=False),
            xbf,
        ),
        "bf16 autocast eager": ("bf16", lambda: _autocast_variant(eager, torch.bfloat16), xbf),
    }
    if compile_variants:
        variants["fp32 torch.compile"] = (
            "fp32",
            lambda: _compiled_variant(eager, torch.float32),
            x32,
        )
        variants["bf16 torch.compile"] = (
            "bf16",
            lambda: _compiled_variant(eager, torch.bfloat16),
            xbf,
        )
    return variants


class SustainedLimit:
    """One variant, prepared once, timed over many consecutive batches whenever asked.

    Why: the best single batch of :func:`forward_limits` is what the model can do at its best
    moment; an engine run is an average over minutes. On a VM whose speed drifts 10-40% within
    minutes, the fair limit for a run is the same variant sustained over many batches just
    before and just after it (and counted per CPU-second too, which a VM lending the process
    fewer cores than asked does not skew).
    """

    def __init__(self, variant: Variant) -> None:
        import torch

        _, make, self.x = variant
        self.fn = make()
        with torch.inference_mode():  # compile / profiling runs, not timed
            self.fn(self.x)
            self.fn(self.x)

    def measure(self, n_batches: int) -> dict[str, float]:
        """Windows/s and windows per CPU-second of this process over ``n_batches`` batches."""
        import torch

        with torch.inference_mode():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n_batches):
                self.fn(self.x)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = n_batches * self.x.shape[0]
        return {"windows": n, "seconds": wall, "cpu_s": cpu, "wps": n / wall, "wpcs": n / cpu}


def forward_limits(
    script_path: Path,
    eager: Any,
    *,
    batch: int,
    size_px: int,
    repeats: int = 4,
    compile_variants: bool = True,
) -> dict[str, Any]:
    """Every variant's windows/s and the best per precision (``best``: precision -> name).

    Parameters
    ----------
    script_path
        The TorchScript file the engine runs.
    eager
        The same network as an eager ``nn.Module`` (fp32, eval mode).
    batch, size_px
        Input batch (windows) and side (px).
    """
    variants = variant_table(script_path, eager, batch, size_px, compile_variants)
    results: dict[str, Any] = {}
    for name, (precision, make, x) in variants.items():
        try:
            t0 = time.perf_counter()
            fn = make()
            prepare_s = time.perf_counter() - t0
            results[name] = {"precision": precision, "prepare_s": prepare_s}
            results[name] |= time_variant(fn, x, repeats=repeats)
        except Exception as exc:  # noqa: BLE001 - a variant this machine cannot run is reported
            results[name] = {"precision": precision, "error": str(exc).splitlines()[0][:200]}
        print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    return {"variants": results, "best": best_per_precision(results)}


def best_per_precision(variants: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Precision -> the name of its fastest variant that ran."""
    best: dict[str, str] = {}
    for name, r in variants.items():
        current = best.get(r["precision"])
        if "wps" in r and (current is None or r["wps"] > variants[current]["wps"]):
            best[r["precision"]] = name
    return best


def best_of(*runs: dict[str, Any]) -> dict[str, Any]:
    """Per variant, the fastest of several :func:`forward_limits` runs (a shared machine only
    ever slows a measurement down); each run's windows/s kept as ``runs_wps``."""
    merged: dict[str, dict[str, Any]] = {}
    for run in runs:
        for name, r in run["variants"].items():
            kept = merged.get(name)
            if kept is None or r.get("wps", 0.0) > kept.get("wps", 0.0):
                merged[name] = {**r, "runs_wps": kept["runs_wps"] if kept else []}
            merged[name]["runs_wps"].append(r.get("wps"))
    return {"variants": merged, "best": best_per_precision(merged)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    args = parser.parse_args()
    import torch
    from bench_engine import KERNEL, build_cnn, cnn_module

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_cnn(Path(tmp) / "cnn.pt")
        res = forward_limits(
            path,
            cnn_module(),
            batch=args.batch,
            size_px=KERNEL,
            compile_variants=not args.no_compile,
        )
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
