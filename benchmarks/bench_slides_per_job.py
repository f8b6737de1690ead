"""Features of the demo cohort with one slide per job against K slides per job
(``features.slides_per_job``), locally, with an encoder whose load dominates a small slide.

The encoder is a randomly initialised ViT-B/16 (86 M parameters: the load of a real UNI or
Phikon export) exported to TorchScript for 32 px inputs (patches of 224 px at 0.5 µm/px,
resized), so that embedding the demo's small slides is cheap and the per-job start-up shows.
Per K: the level stage runs first (not timed; with K > 1 the batch repeats it in-process,
which is timed), then ``snakemake features_all --cores 2`` from empty features, timed as wall
time and CPU time of the whole process tree. The limit, measured in the same run, is the cost
that batching can save: a fresh process that imports wsiproc + torch and loads the encoder,
times the loads saved.

Usage: flock /tmp/wsiproc-bench.lock python benchmarks/bench_slides_per_job.py [--json PATH]
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

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE.parent / "tests")]

from _encoders import ViT, seeded, sidecar, write_encoder  # noqa: E402

from wsiproc.demo import demo_cohort  # noqa: E402


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds of ``cmd`` and its children."""
    cpu, wall = children_cpu(), time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.monotonic() - wall, children_cpu() - cpu, proc


def snakemake(work: Path, config: Path, *targets: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
            "-d", str(work), "--workflow-profile", "none", "--cores", "2", *targets,
            "--configfile", str(config)]  # fmt: skip


def load_cost(encoder: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a fresh process that imports torch and wsiproc's encoder and
    loads ``encoder``: what a features job pays before its first patch."""
    code = f"from wsiproc.features.encoder import Encoder; Encoder({str(encoder)!r}, device='cpu')"
    wall, cpu, proc = timed([sys.executable, "-c", code], REPO)
    assert proc.returncode == 0, proc.stderr
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--k", type=int, default=3, help="slides per job of the batched run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slides-per-job-") as tmp:
        work = Path(tmp)
        config_path = demo_cohort(work / "demo")
        side = sidecar("vit-b16-32px", 32, 768, pooling="cls", patch_size=224)
        encoder = write_encoder(work / "vit_b16_32.pt", seeded(ViT, 768, 12, 12, 16, 32), side)
        base = yaml.safe_load(config_path.read_text())
        slides = [ln.split("\t")[:2] for ln in (work / "demo" / "samples.tsv").read_text()
                  .splitlines()[1:]]  # fmt: skip
        limit_wall, limit_cpu = load_cost(encoder)
        runs = {}
        for k in (1, args.k):
            config = dict(base, outdir=str(work / f"k{k}"), logdir=str(work / f"k{k}_logs"))
            config["features"] = dict(
                base["features"], encoder=str(encoder), device="cpu", slides_per_job=k,
                exports=[],
            )  # fmt: skip
            config["slide_model"] = dict(base["slide_model"], enabled=False)
            path = work / f"k{k}.yaml"
            path.write_text(yaml.safe_dump(config))
            masks = [str(work / f"k{k}" / p / s / "mask.png") for p, s in slides]
            level = subprocess.run(snakemake(work, path, *masks), capture_output=True, text=True)
            assert level.returncode == 0, level.stderr[-2000:]
            wall, cpu, proc = timed(snakemake(work, path, "features_all"), work)
            assert proc.returncode == 0, proc.stderr[-3000:]
            logs = work / f"k{k}_logs"
            if k == 1:
                loads = len(list((logs / "features").rglob("*.log")))
            else:
                loads = sum(
                    log.read_text().count("batch: loaded encoder")
                    for log in (logs / "features_batch").glob("*.log")
                )
            runs[k] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "encoder_loads": loads}
    k = args.k
    saved = runs[1]["encoder_loads"] - runs[k]["encoder_loads"]
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other users)",
        "slides": len(slides),
        "encoder": "ViT-B/16 TorchScript, 86 M parameters, 32 px input, 224 px patches",
        "start_and_load_wall_s": round(limit_wall, 2),
        "start_and_load_cpu_s": round(limit_cpu, 2),
        "runs": {f"k{key}": value for key, value in runs.items()},
        "saved_wall_s": round(runs[1]["wall_s"] - runs[k]["wall_s"], 2),
        "saved_cpu_s": round(runs[1]["cpu_s"] - runs[k]["cpu_s"], 2),
        "limit_saved_cpu_s": round(saved * limit_cpu, 2),
    }
    res["saved_cpu_over_limit"] = round(res["saved_cpu_s"] / res["limit_saved_cpu_s"], 2)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
