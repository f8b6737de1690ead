"""Measure ``wsiproc features`` against the encoder's own throughput, all in one run.

Generates its own slides (bench_engine's JPEG pyramidal TIFF at 0.25 µm/px, ~40% tissue),
builds a randomly initialised ViT-B/16 (86 M parameters, the architecture of Phikon and
CONCH v1.5's tower) in pure torch and exports it to TorchScript with its sidecar (224 px,
0.5 µm/px, class token, 768 dims), then measures:

* the encoder's best forward throughput: the TorchScript module alone on a float batch
  already on the device, and through wsiproc's encoder path (uint8 -> normalised -> module);
* ``wsiproc features`` end to end on the same machine (loaders, tissue gating, checkpoint,
  h5 assembly), with the assembly time against the stream time;
* peak RSS of the process tree for a slide and one with 4x the pixels (``builtin:tiny``,
  so that the 4x run stays short: the encoder's weights are a constant, the question is
  whether memory grows with N).

Prints a table; ``--json PATH`` writes every figure. Ratios matter, not seconds.

Usage: flock /tmp/wsiproc-bench.lock python benchmarks/bench_features.py [--json out.json]
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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from _encoders import ViT, seeded, sidecar, write_encoder  # noqa: E402
from bench_engine import TreeRSS, make_slide  # noqa: E402

BATCH = 32
WORKERS = 2
PATCH = 224


def build_vit_b(path: Path, precision: str) -> Path:
    """ViT-B/16 at 224 px as TorchScript, sidecar beside it."""
    side = sidecar("vit-b16-random", PATCH, 768, pooling="cls", precision=precision)
    return write_encoder(path, seeded(ViT, 768, 12, 12, 16, PATCH), side)


def forward_limits(encoder_path: Path, precision: str) -> dict:
    """Patches/s of the module alone (float input on the device) and of the encoder path."""
    import torch

    from wsiproc.features.encoder import Encoder

    torch.set_num_threads(os.cpu_count() or 1)
    enc = Encoder(str(encoder_path), device="cpu", precision=precision)
    pixels = np.random.default_rng(0).integers(0, 255, (BATCH, PATCH, PATCH, 3), dtype=np.uint8)
    x = torch.rand(BATCH, 3, PATCH, PATCH, dtype=enc.dtype)
    rounds = 3

    def best(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return BATCH / min(times)

    with torch.inference_mode():
        module_pps = best(lambda: enc.module(x))
    encoder_pps = best(lambda: enc(pixels))
    return {"module_pps": module_pps, "encoder_pps": encoder_pps, "encoder": enc, "pixels": pixels}


def sustained_pps(limits: dict, n: int) -> tuple[float, float]:
    """Patches/s of the encoder path over ``n`` patches in batches of BATCH (the last one
    partial), timed as a whole: what a stream of ``n`` patches could reach at most here, where
    the best-of-rounds figures above time one lucky batch. Also the patches per CPU-second
    this process spent on them (all its threads): the same work counted in CPU time, which a
    neighbour taking cores from the VM does not change."""
    enc, pixels = limits["encoder"], limits["pixels"]
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, BATCH):
        enc(pixels[: min(BATCH, n - start)])
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children and their own reaped children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_features(
    slide: Path, out: Path, encoder: str, precision: str, rss_interval: float = 0.05
) -> dict:
    """``wsiproc features`` as a user runs it; peak RSS of its process tree."""
    cmd = [
        sys.executable, "-m", "wsiproc", "features", str(slide), "--encoder", encoder,
        "--out", str(out), "--workers", str(WORKERS), "--batch-size", str(BATCH),
        "--threads", str(os.cpu_count() or 1), "--device", "cpu", "--precision", precision,
        "--quiet",
    ]  # fmt: skip
    t0, c0 = time.perf_counter(), children_cpu_s()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid, rss_interval)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    cpu_s = children_cpu_s() - c0  # the whole tree: collector, loaders, writer
    peak = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"wsiproc features failed: {err.strip()}")
    meta = json.loads(out.with_suffix(".json").read_text())
    n = meta["windows_processed"]
    t = meta["timings_s"]
    return {
        "patches": n,
        "wall_s": wall,
        "timings_s": t,
        "pps_stream": n / t["stream"] if t["stream"] else None,
        "pps_wall": n / wall,
        "cpu_s": cpu_s,
        "cores_used": cpu_s / wall,
        "patches_per_cpu_s": n / cpu_s if cpu_s else None,
        "assemble_over_stream": t["assemble"] / t["stream"] if t["stream"] else None,
        "h5_mb": out.stat().st_size / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_pss_mb": rss.peak_pss / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--precision", default="fp32", help="fp32 (no AMX here) or bf16")
    parser.add_argument("--side", type=int, default=8000, help="level-0 side of the 1x slide")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the builtin:tiny memory runs"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        work = Path(tmp)
        slide = make_slide(work / "slide.tif", args.side, args.side, seed=21)
        slide4 = make_slide(work / "slide4.tif", 2 * args.side, 2 * args.side, seed=22)
        small = run_features(slide, work / "t1" / "features.h5", "builtin:tiny", "fp32")
        big = run_features(slide4, work / "t4" / "features.h5", "builtin:tiny", "fp32")
        memory = {
            "rss_tiny_1x": small,
            "rss_tiny_4x": big,
            "rss_growth_4x": big["peak_rss_mb"] / small["peak_rss_mb"],
            "pss_growth_4x": big["peak_pss_mb"] / small["peak_pss_mb"],
        }
        memory_rows = [
            (
                "peak RSS 1x / 4x pixels (builtin:tiny)",
                f"{small['peak_rss_mb']:.0f} / {big['peak_rss_mb']:.0f} MB "
                f"(x{memory['rss_growth_4x']:.2f}; N {small['patches']} / {big['patches']})",
            ),
            (
                "peak PSS 1x / 4x pixels (shared pages once)",
                f"{small['peak_pss_mb']:.0f} / {big['peak_pss_mb']:.0f} MB "
                f"(x{memory['pss_growth_4x']:.2f})",
            ),
        ]
        if args.memory_only:
            return report({"machine": machine(), **memory}, memory_rows, args.json)
        vit = build_vit_b(work / "vit_b16.pt", args.precision)
        limits = forward_limits(vit, args.precision)
        # The sustained limit right before and right after the run (the VM's speed drifts by
        # 10-20% over minutes): the faster of the two is kept.
        before, before_cpu = sustained_pps(limits, 5 * BATCH)
        # Sampled once a second: at 50 ms the sampler's own CPU slowed this run by 10-25%.
        e2e = run_features(
            slide, work / "vit" / "features.h5", str(vit), args.precision, rss_interval=1.0
        )
        after, after_cpu = sustained_pps(limits, e2e["patches"])
        del limits["encoder"], limits["pixels"]
        limits["encoder_sustained_before_pps"] = before
        limits["encoder_sustained_after_pps"] = after
        limits["encoder_sustained_pps"] = max(before, after)
        limits["encoder_patches_per_cpu_s"] = max(before_cpu, after_cpu)
    res = {
        "machine": machine(),
        "precision": args.precision,
        "forward": limits,
        "vit_b16": e2e,
        "ratio_stream_over_module": e2e["pps_stream"] / limits["module_pps"],
        "ratio_stream_over_encoder": e2e["pps_stream"] / limits["encoder_pps"],
        "ratio_stream_over_sustained": e2e["pps_stream"] / limits["encoder_sustained_pps"],
        # Whole run (start-up, loaders and writer included) against the encoder alone, both in
        # patches per CPU-second: the ratio a VM whose cores come and go cannot move.
        "ratio_cpu_work": e2e["patches_per_cpu_s"] / limits["encoder_patches_per_cpu_s"],
        # The stream alone: the collector process's CPU-seconds while it streamed (its model
        # threads included; loaders and writer not), against the encoder alone's.
        "ratio_cpu_stream": e2e["patches"]
        / e2e["timings_s"]["stream_cpu"]
        / limits["encoder_patches_per_cpu_s"],
        "encoder_busy_in_stream": e2e["timings_s"]["stream_collector"] / e2e["timings_s"]["stream"],
        "ratio_wall_over_module": e2e["pps_wall"] / limits["module_pps"],
        **memory,
    }
    rows = [
        ("ViT-B/16 module alone", f"{limits['module_pps']:.2f} patches/s"),
        ("ViT-B/16 through the encoder path", f"{limits['encoder_pps']:.2f} patches/s"),
        (
            f"wsiproc features, stream ({e2e['patches']} patches)",
            f"{e2e['pps_stream']:.2f} patches/s "
            f"(x{res['ratio_stream_over_module']:.2f} of the module)",
        ),
        (
            f"encoder path sustained over {e2e['patches']} patches (before / after the run)",
            f"{before:.2f} / {after:.2f} patches/s "
            f"(stream x{res['ratio_stream_over_sustained']:.2f} of it)",
        ),
        (
            "patches per CPU-second: whole run / encoder alone",
            f"{e2e['patches_per_cpu_s']:.3f} / {limits['encoder_patches_per_cpu_s']:.3f} "
            f"(x{res['ratio_cpu_work']:.2f}; the run had {e2e['cores_used']:.2f} cores)",
        ),
        (
            "patches per CPU-second: collector process in the stream / encoder alone",
            f"x{res['ratio_cpu_stream']:.2f}",
        ),
        (
            "encoder busy during the stream",
            f"{100 * res['encoder_busy_in_stream']:.1f}% of {e2e['timings_s']['stream']:.1f} s",
        ),
        ("wsiproc features, wall incl. start-up", f"{e2e['pps_wall']:.2f} patches/s"),
        (
            "h5 assembly / stream",
            f"{e2e['timings_s']['assemble']:.3f} s / {e2e['timings_s']['stream']:.1f} s "
            f"({100 * e2e['assemble_over_stream']:.2f}%)",
        ),
        *memory_rows,
        ("peak RSS, ViT-B/16 run", f"{e2e['peak_rss_mb']:.0f} MB"),
    ]
    return report(res, rows, args.json)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"


def report(res: dict, rows: list[tuple[str, str]], path: Path | None) -> int:
    """Print the table; write every figure to ``path`` as JSON."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if path:
        path.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
