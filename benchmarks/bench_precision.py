"""What bf16 costs in accuracy: the benchmark CNN over every demo slide, fp32 vs bf16.

Writes the demo cohort (``wsiproc.demo``), saves the ResNet-18-sized benchmark CNN as
TorchScript (``bench_engine.build_cnn``: softmax over 2 classes), runs ``wsiproc infer`` on
each slide in fp32 and in bf16 (the demo's 64-px windows at 1 µm/px, stride 64), and compares
the outputs window by window: max and 99th-percentile absolute difference, Spearman rank
correlation of each output column, and the share of windows whose top class changes. Also
times both runs (a shared machine: ratios only). Prints a summary and, with ``--json PATH``,
every figure.

Usage: python benchmarks/bench_precision.py [--json out.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

KERNEL = 64
STRIDE = 64
MPP = 1.0


def run_infer(slide: Path, out: Path, model: Path, precision: str, *extra: str) -> dict:
    """One ``wsiproc infer`` run as a user runs it; its windows.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "wsiproc", "infer", str(slide),
        "--out", str(out),
        "--kernel-size", str(KERNEL),
        "--stride", str(STRIDE),
        "--mpp", str(MPP),
        "--model", str(model),
        "--precision", precision,
        "--device", "cpu",
        "--threads", str(os.cpu_count() or 1),
        "--quiet",
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"infer failed on {slide}: {proc.stderr.strip()}")
    return json.loads(out.with_suffix(".json").read_text())


def outputs(csv: Path, names: list[str]) -> np.ndarray:
    """The output columns of a windows CSV (rows in file order), float64."""
    import pandas as pd

    return pd.read_csv(csv, usecols=names)[names].to_numpy(np.float64)


def compare(fp32: np.ndarray, bf16: np.ndarray) -> dict:
    """Differences of bf16 outputs from fp32 ones (same windows, same order)."""
    from scipy.stats import spearmanr

    diff = np.abs(bf16 - fp32)
    rho = [float(spearmanr(fp32[:, j], bf16[:, j]).statistic) for j in range(fp32.shape[1])]
    return {
        "windows": int(fp32.shape[0]),
        "max_abs_diff": float(diff.max()),
        "p99_abs_diff": float(np.quantile(diff, 0.99)),
        "mean_abs_diff": float(diff.mean()),
        "spearman_min": min(rho),
        "top_class_changed": float(np.mean(fp32.argmax(1) != bf16.argmax(1))),
        "fp32_output_range": [float(fp32.min()), float(fp32.max())],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--workdir", help="keep generated files here (default: a temp dir)")
    args = parser.parse_args()
    from bench_engine import build_cnn

    from wsiproc.demo import demo_cohort
    from wsiproc.precision import cpu_bf16_flags

    work = Path(args.workdir or tempfile.mkdtemp(prefix="wsiproc-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(demo_cohort(work / "demo").read_text())
    sheet = [line.split("\t") for line in Path(config["samples"]).read_text().splitlines()[1:]]
    # (slide, the sheet's mpp for a file without one)
    slides = [(work / "demo" / row[2], row[3] if len(row) > 3 else "") for row in sheet]
    model = build_cnn(work / "cnn.pt")
    per_slide, seconds = {}, {"fp32": 0.0, "bf16": 0.0}
    all_fp32, all_bf16 = [], []
    for slide, sheet_mpp in slides:
        extra = ("--slide-mpp", sheet_mpp) if sheet_mpp else ()
        metas = {}
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            out = work / precision / slide.stem / "windows.csv"
            metas[precision] = run_infer(slide, out, model, precision, *extra)
            seconds[precision] += time.perf_counter() - t0
        names = metas["fp32"]["outputs"]
        if metas["fp32"]["windows_processed"] == 0:
            continue  # the glass slide
        a = outputs(work / "fp32" / slide.stem / "windows.csv", names)
        b = outputs(work / "bf16" / slide.stem / "windows.csv", names)
        per_slide[slide.stem] = compare(a, b)
        all_fp32.append(a)
        all_bf16.append(b)
        print(f"{slide.stem}: {per_slide[slide.stem]}", file=sys.stderr, flush=True)
    overall = compare(np.concatenate(all_fp32), np.concatenate(all_bf16))
    res = {
        "cpu_bf16_flags": sorted(cpu_bf16_flags()),
        "settings": {"kernel": KERNEL, "stride": STRIDE, "mpp": MPP, "model": "bench CNN"},
        "overall": overall,
        "per_slide": per_slide,
        "seconds": seconds,
        "bf16_vs_fp32_speed": seconds["fp32"] / seconds["bf16"],
    }
    print(
        f"{overall['windows']} windows on {len(per_slide)} demo slides: bf16 vs fp32 max abs "
        f"diff {overall['max_abs_diff']:.2e} (p99 {overall['p99_abs_diff']:.2e}), Spearman "
        f">= {overall['spearman_min']:.4f}, top class changed in "
        f"{100 * overall['top_class_changed']:.2f}% of windows; whole runs bf16 "
        f"{res['bf16_vs_fp32_speed']:.2f}x the speed of fp32 "
        f"(CPU bf16 flags: {', '.join(res['cpu_bf16_flags']) or 'none'})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
