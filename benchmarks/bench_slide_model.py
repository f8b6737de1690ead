"""Peak memory of ``wsiproc slide-predict`` on a large bag: the bag must be held once.

Writes a features.h5 of N patches × D float32 (default 200,000 × 1536, 1.23 GB; random
features, TRIDENT's layout, chunks of 256 rows as ``wsiproc features`` writes them), then runs
``wsiproc slide-predict`` in a child process for each model and reads the child's peak RSS
(``ru_maxrss``). The limit is 1.5 × the features array (N·D·4 bytes), measured in the same
run; the child's RSS after importing torch alone is printed too, as the floor.

Models: ``builtin:abmil-demo`` (fp32) and the docs' ABMIL scripted with bf16 weights and
``precision: bf16`` in its sidecar (the bag is then read into a bf16 tensor: half the bytes).

Usage: flock /tmp/wsiproc-bench.lock python benchmarks/bench_slide_model.py
       [--n 200000] [--dim 1536] [--json out.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LIMIT = 1.5
"""Peak RSS allowed, as a multiple of the float32 features array."""

ABMIL = """
import torch
from torch import nn


class ABMIL(nn.Module):
    def __init__(self, input_dim: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU())
        self.value = nn.Linear(hidden, hidden)
        self.gate = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)
        self.classify = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.project(x)
        gated = torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))
        attention = torch.softmax(self.score(gated).squeeze(1), dim=0)
        return self.classify(attention @ h), attention
"""


def write_bag(path: Path, n: int, dim: int) -> None:
    """A features.h5 of ``n`` random patches on a square-ish grid, written in blocks."""
    import h5py

    cols = int(np.ceil(np.sqrt(n * 1.25)))
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        feats = h5.create_dataset("features", (n, dim), dtype="<f4", chunks=(256, dim))
        feats.attrs.update({"encoder": "bench", "precision": "fp32", "wsiproc": "bench"})
        block = 8192
        for a in range(0, n, block):
            b = min(n, a + block)
            feats[a:b] = rng.standard_normal((b - a, dim), dtype=np.float32)
        idx = np.arange(n)
        coords = np.stack([(idx % cols) * 448, (idx // cols) * 448], axis=1).astype(np.int64)
        c = h5.create_dataset("coords", data=coords)
        c.attrs.update(
            {
                "patch_size": 224, "patch_size_level0": 448, "overlap": 0, "name": "bench",
                "level0_width": cols * 448, "level0_height": (n // cols + 1) * 448,
                "patch_level": 0, "mpp_level0": 0.25, "target_mpp": 0.5, "tile_size_um": 112.0,
                "level0_magnification": 40, "target_magnification": 20,
            }
        )  # fmt: skip
        h5.create_dataset("tissue", data=np.ones(n, dtype=np.float32))


def bf16_model(directory: Path, dim: int) -> Path:
    """The docs' ABMIL with bf16 weights, scripted, with a ``precision: bf16`` sidecar."""
    import importlib.util

    import torch

    script = directory / "abmil_bench.py"
    script.write_text(ABMIL)  # TorchScript reads the class's source from a file
    spec = importlib.util.spec_from_file_location("abmil_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.ABMIL(dim, 2).to(torch.bfloat16).eval()
    path = directory / "abmil_bf16.pt"
    torch.jit.script(model).save(str(path))
    side = {"name": "abmil-bf16", "input_dim": dim, "classes": ["a", "b"]}
    side.update({"task": "classification", "encoder": "bench", "precision": "bf16"})
    path.with_name(path.name + ".json").write_text(json.dumps(side))
    return path


def child_peak_mb(argv: list[str]) -> tuple[float, float]:
    """Run ``argv`` as a child; return (its peak RSS in MiB, wall seconds)."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:]); dt = time.perf_counter() - t; "
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; "
        "print(f'{peak} {dt}'); sys.exit(r.returncode)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr}")
    peak, wall = out.stdout.split()[-2:]
    return float(peak), float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-slide-model-"))
    workdir.mkdir(parents=True, exist_ok=True)
    h5 = workdir / "features.h5"
    t = time.perf_counter()
    write_bag(h5, args.n, args.dim)
    print(f"wrote {h5} ({h5.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
    array_mb = args.n * args.dim * 4 / 2**20
    floor_mb, _ = child_peak_mb([sys.executable, "-c", "import torch, h5py"])
    wsiproc = [sys.executable, "-m", "wsiproc"]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "(shared with other engineers' jobs)",
        "n": args.n,
        "dim": args.dim,
        "features_array_mib": round(array_mb, 1),
        "limit": LIMIT,
        "import_torch_h5py_peak_rss_mib": round(floor_mb, 1),
        "runs": [],
    }
    print(f"features array {array_mb:.0f} MiB; limit {LIMIT} x = {LIMIT * array_mb:.0f} MiB")
    print(f"floor: python + import torch, h5py: {floor_mb:.0f} MiB")
    for model in ("builtin:abmil-demo", str(bf16_model(workdir, args.dim))):
        out = workdir / Path(model).stem.replace(":", "_")
        argv = [*wsiproc, "slide-predict", str(h5), "--model", model, "--device", "cpu"]
        argv += ["--out", str(out / "slide.json"), "--attention-out", str(out / "a.csv")]
        peak, wall = child_peak_mb(argv)
        ratio = peak / array_mb
        ok = "ok" if ratio <= LIMIT else "OVER LIMIT"
        print(f"{model}: peak RSS {peak:.0f} MiB = {ratio:.3f} x features; {wall:.1f} s; {ok}")
        results["runs"].append(
            {"model": Path(model).name, "peak_rss_mib": round(peak, 1), "ratio": round(ratio, 3),
             "wall_s": round(wall, 2), "within_limit": ratio <= LIMIT}
        )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if not args.workdir:
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
