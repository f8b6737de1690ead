"""Measure how long Snakemake takes to plan the wsiproc workflow for big sample sheets.

Planning time is paid before the first job of every run starts (and, on a cluster, partly
again by the Snakemake inside every job), so it must grow with the cohort no faster than
Snakemake's own cost. The limit is measured in the same run: a bare Snakefile with the same
DAG shape (the same rules, with the same inputs, outputs, logs and benchmarks, and `touch`
as the command) planned for the same sheet. Each size is planned in two ways:

* ``quiet``: ``snakemake -n -q`` without any profile (Snakemake's own minimum);
* ``profile``: ``snakemake -n`` with the workflow's default profile (what a user's dry run
  costs: printing every job, printshellcmds, keep-going, rerun-incomplete).

The figure compared is CPU time (user + system): planning runs on one thread, so on a machine
shared with other work its CPU time is its work while its wall time also counts waiting for a
core (both are printed). ``--stages`` picks the optional stages planned in both workflows
(default ``all``: features and slide model enabled). With several sizes, the growth exponent
is the slope of log(CPU time) against log(slides), for the workflow and the bare Snakefile.

Also measures a "touched" dry run: with every output of a finished run in place (empty
files, mtimes in DAG order), one slide's file is given a newer mtime and the dry run must
plan exactly that slide's jobs, its patient's CSV and the cohort tables.

Slides are empty files (a dry run never opens them). Prints a table; ``--json`` writes it.

Usage: python benchmarks/bench_dag.py [--sizes 1000 3000 10000] [--repeats 3]
       [--stages base|features|all] [--modes quiet profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLIDES_PER_PATIENT = 3

BARE_SNAKEFILE = """\
# Bare Snakefile: the wsiproc DAG's shape and nothing else (the benchmark's limit).
import csv
import os

rows = list(csv.DictReader(open(config["samples"]), delimiter="\\t"))
PATIENTS = list(dict.fromkeys(r["patient"] for r in rows))
PATH = {r["slide"]: r["path"] for r in rows}
BY_PATIENT = {}
for r in rows:
    BY_PATIENT.setdefault(r["patient"], []).append(r["slide"])
SD = os.path.dirname(config["samples"])
P = [r["patient"] for r in rows]
S = [r["slide"] for r in rows]


def slide(w):
    return os.path.join(SD, PATH[w.slide])


def patient_windows(w):
    return expand("results/{p}/{s}/windows.csv", p=w.patient, s=BY_PATIENT[w.patient])


localrules: all, patient_csv, report, features_table, predictions

FEATURES = config.get("features", False)
SLIDE_MODEL = config.get("slide_model", False)


rule all:
    input:
        expand("results/{p}/{s}/heatmap.tif", zip, p=P, s=S),
        expand("results/{p}/{s}/qc.json", zip, p=P, s=S),
        expand("results/{p}/{p}.csv", p=PATIENTS),
        "results/report.html",
        "results/summary.tsv",
        expand("results/{p}/{s}/features.h5", zip, p=P, s=S) if FEATURES else [],
        "results/features.tsv" if FEATURES else [],
        expand("results/{p}/{s}/attention_rgb.tif", zip, p=P, s=S) if SLIDE_MODEL else [],
        "results/predictions.tsv" if SLIDE_MODEL else [],
        "results/patient_predictions.tsv" if SLIDE_MODEL else [],

rule select_level:
    input:
        slide,
    output:
        "results/{patient}/{slide}/level.json",
        "results/{patient}/{slide}/thumbnail.png",
        "results/{patient}/{slide}/mask.png",
    log:
        "logs/select_level/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/select_level/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule infer:
    input:
        slide,
        "results/{patient}/{slide}/level.json",
        "results/{patient}/{slide}/mask.png",
    output:
        "results/{patient}/{slide}/windows.csv",
        "results/{patient}/{slide}/windows.json",
    log:
        "logs/infer/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/infer/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule heatmap:
    input:
        "results/{patient}/{slide}/windows.csv",
        "results/{patient}/{slide}/windows.json",
    output:
        "results/{patient}/{slide}/heatmap.tif",
        "results/{patient}/{slide}/heatmap_rgb.tif",
        "results/{patient}/{slide}/windows.geojson",
    log:
        "logs/heatmap/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/heatmap/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule qc:
    input:
        slide,
        "results/{patient}/{slide}/level.json",
        "results/{patient}/{slide}/thumbnail.png",
        "results/{patient}/{slide}/mask.png",
        "results/{patient}/{slide}/windows.csv",
        "results/{patient}/{slide}/windows.json",
        "logs/benchmarks/infer/{patient}/{slide}.tsv",
        "results/{patient}/{slide}/features.json" if FEATURES or SLIDE_MODEL else [],
        "results/{patient}/{slide}/slide.json" if SLIDE_MODEL else [],
    output:
        "results/{patient}/{slide}/qc.json",
        "results/{patient}/{slide}/qc.html",
    log:
        "logs/qc/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/qc/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule patient_csv:
    input:
        patient_windows,
    output:
        "results/{patient}/{patient}.csv",
    log:
        "logs/patient_csv/{patient}.log",
    benchmark:
        "logs/benchmarks/patient_csv/{patient}.tsv"
    shell:
        "touch {output} {log}"

rule report:
    input:
        expand("results/{p}/{s}/qc.json", zip, p=P, s=S),
        expand("results/{p}/{s}/heatmap_rgb.tif", zip, p=P, s=S),
        expand("results/{p}/{s}/features.json", zip, p=P, s=S) if FEATURES or SLIDE_MODEL else [],
        expand("results/{p}/{s}/slide.json", zip, p=P, s=S) if SLIDE_MODEL else [],
        expand("results/{p}/{s}/attention.png", zip, p=P, s=S) if SLIDE_MODEL else [],
        config["samples"],
    output:
        "results/report.html",
        "results/summary.tsv",
    log:
        "logs/report/report.log",
    benchmark:
        "logs/benchmarks/report/report.tsv"
    shell:
        "touch {output} {log}"

rule features:
    input:
        slide,
        "results/{patient}/{slide}/mask.png",
    output:
        "results/{patient}/{slide}/features.h5",
        "results/{patient}/{slide}/features.json",
    log:
        "logs/features/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/features/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule features_table:
    input:
        expand("results/{p}/{s}/features.json", zip, p=P, s=S),
        config["samples"],
    output:
        "results/features.tsv",
    log:
        "logs/features_table/features_table.log",
    benchmark:
        "logs/benchmarks/features_table/features_table.tsv"
    shell:
        "touch {output} {log}"

rule slide_predict:
    input:
        "results/{patient}/{slide}/features.h5",
    output:
        "results/{patient}/{slide}/attention.csv",
        "results/{patient}/{slide}/attention.json",
        "results/{patient}/{slide}/slide.json",
    log:
        "logs/slide_predict/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/slide_predict/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule attention_heatmap:
    input:
        "results/{patient}/{slide}/attention.csv",
        "results/{patient}/{slide}/attention.json",
    output:
        "results/{patient}/{slide}/attention.tif",
        "results/{patient}/{slide}/attention_rgb.tif",
        "results/{patient}/{slide}/attention.geojson",
        "results/{patient}/{slide}/attention.png",
    log:
        "logs/attention_heatmap/{patient}/{slide}.log",
    benchmark:
        "logs/benchmarks/attention_heatmap/{patient}/{slide}.tsv"
    shell:
        "touch {output} {log}"

rule predictions:
    input:
        expand("results/{p}/{s}/slide.json", zip, p=P, s=S),
        config["samples"],
    output:
        "results/predictions.tsv",
        "results/patient_predictions.tsv",
    log:
        "logs/predictions/predictions.log",
    benchmark:
        "logs/benchmarks/predictions/predictions.tsv"
    shell:
        "touch {output} {log}"
"""


def make_cohort(root: Path, n_slides: int) -> Path:
    """A sheet of ``n_slides`` empty slide files, three per patient; returns the sheet."""
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    lines = ["patient\tslide\tpath\tmpp"]
    for i in range(n_slides):
        patient, slide = f"P{i // SLIDES_PER_PATIENT:05d}", f"S{i:05d}"
        (slides / f"{slide}.svs").touch()
        lines.append(f"{patient}\t{slide}\tslides/{slide}.svs\t")
    sheet = root / "samples.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def snakemake(workdir: Path, snakefile: Path, args: list[str]) -> tuple[float, float, str]:
    """Run snakemake once; wall seconds, CPU seconds and combined output (raises with the
    output on failure).

    Planning is one thread, so its CPU time (user + system, of Snakemake and whatever it
    waited for) is its work; on a machine shared with other jobs, the wall time is that plus
    waiting for a core."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    log = workdir / "snakemake.out"
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, out


# Which optional stages are planned: `base` is the heatmap chain alone; `features` adds the
# features rules; `all` adds the slide model's too (what a cohort that uses both plans).
STAGES = {
    "base": {"features": False, "slide_model": False},
    "features": {"features": True, "slide_model": False},
    "all": {"features": True, "slide_model": True},
}


def real_config(workdir: Path, sheet: Path, stages: str) -> list[str]:
    """The shipped config with the stages switched on, the generated sheet, the bare
    workflow's output dirs."""
    overlay = workdir / f"stages-{stages}.yaml"
    overlay.write_text(
        "".join(f"{k}:\n  enabled: {str(v).lower()}\n" for k, v in STAGES[stages].items())
    )
    return [
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(overlay),
        "--config",
        f"samples={sheet}",
        "outdir=results",
        "logdir=logs",
    ]


def variants(workdir: Path, sheet: Path, stages: str) -> dict[str, dict[str, list[str]]]:
    """Per mode, the arguments of the real and the bare workflow."""
    config = real_config(workdir, sheet, stages)
    flags = [f"{k}={v}" for k, v in STAGES[stages].items() if v]
    bare_config = ["--config", f"samples={sheet}", *flags]
    profile = REPO / "workflow" / "profiles" / "default"
    return {
        "quiet": {
            "real": ["-n", "-q", "rules", "--workflow-profile", "none", *config],
            "bare": ["-n", "-q", "rules", "--workflow-profile", "none", *bare_config],
        },
        "profile": {
            "real": ["-n", "--workflow-profile", str(profile), *config],
            "bare": ["-n", "--workflow-profile", str(profile), *bare_config],
        },
    }


# Per stage (in DAG order): the files one slide's jobs write, as in workflow/rules/*.smk,
# and the stage switch that plans them (None: always).
SLIDE_FILES = [
    (
        None,
        [
            "results/{p}/{s}/level.json",
            "results/{p}/{s}/thumbnail.png",
            "results/{p}/{s}/mask.png",
            "logs/select_level/{p}/{s}.log",
            "logs/benchmarks/select_level/{p}/{s}.tsv",
        ],
    ),
    (
        None,
        [
            "results/{p}/{s}/windows.csv",
            "results/{p}/{s}/windows.json",
            "logs/infer/{p}/{s}.log",
            "logs/benchmarks/infer/{p}/{s}.tsv",
        ],
    ),
    (
        "features",
        [
            "results/{p}/{s}/features.h5",
            "results/{p}/{s}/features.json",
            "logs/features/{p}/{s}.log",
            "logs/benchmarks/features/{p}/{s}.tsv",
        ],
    ),
    (
        None,
        [
            "results/{p}/{s}/heatmap.tif",
            "results/{p}/{s}/heatmap_rgb.tif",
            "results/{p}/{s}/windows.geojson",
            "logs/heatmap/{p}/{s}.log",
            "logs/benchmarks/heatmap/{p}/{s}.tsv",
        ],
    ),
    (
        "slide_model",
        [
            "results/{p}/{s}/attention.csv",
            "results/{p}/{s}/attention.json",
            "results/{p}/{s}/slide.json",
            "logs/slide_predict/{p}/{s}.log",
            "logs/benchmarks/slide_predict/{p}/{s}.tsv",
        ],
    ),
    (
        "slide_model",
        [
            "results/{p}/{s}/attention.tif",
            "results/{p}/{s}/attention_rgb.tif",
            "results/{p}/{s}/attention.geojson",
            "results/{p}/{s}/attention.png",
            "logs/attention_heatmap/{p}/{s}.log",
            "logs/benchmarks/attention_heatmap/{p}/{s}.tsv",
        ],
    ),
    (
        None,  # last: qc reads features.json and slide.json too
        [
            "results/{p}/{s}/qc.json",
            "results/{p}/{s}/qc.html",
            "logs/qc/{p}/{s}.log",
            "logs/benchmarks/qc/{p}/{s}.tsv",
        ],
    ),
]
PATIENT_FILES = [
    "results/{p}/{p}.csv",
    "logs/patient_csv/{p}.log",
    "logs/benchmarks/patient_csv/{p}.tsv",
]
COHORT_FILES = [
    (
        None,
        [
            "results/report.html",
            "results/summary.tsv",
            "logs/report/report.log",
            "logs/benchmarks/report/report.tsv",
        ],
    ),
    (
        "features",
        [
            "results/features.tsv",
            "logs/features_table/features_table.log",
            "logs/benchmarks/features_table/features_table.tsv",
        ],
    ),
    (
        "slide_model",
        [
            "results/predictions.tsv",
            "results/patient_predictions.tsv",
            "logs/predictions/predictions.log",
            "logs/benchmarks/predictions/predictions.tsv",
        ],
    ),
]


def write_outputs(workdir: Path, sheet: Path, stages: str) -> None:
    """Every output of a finished run, as empty files whose mtimes follow the DAG's order."""
    rows = [line.split("\t")[:2] for line in sheet.read_text().splitlines()[1:]]
    start = time.time() - 3600
    enabled = {None} | {k for k, v in STAGES[stages].items() if v}

    def make(path: str, stage: int) -> None:
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
        os.utime(target, (start + stage, start + stage))

    for patient, slide in rows:
        os.utime(workdir / "slides" / f"{slide}.svs", (start, start))
        for stage, (switch, patterns) in enumerate(SLIDE_FILES, 1):
            for pattern in patterns if switch in enabled else []:
                make(pattern.format(p=patient, s=slide), stage)
    for patient in dict.fromkeys(p for p, _ in rows):
        for pattern in PATIENT_FILES:
            make(pattern.format(p=patient), 10)
    os.utime(sheet, (start, start))
    for switch, paths in COHORT_FILES:
        for path in paths if switch in enabled else []:
            make(path, 11)


def touched_plan(workdir: Path, snakefile: Path, sheet: Path, stages: str) -> dict[str, object]:
    """With every output in place, one slide is replaced: which jobs are planned, how fast?"""
    write_outputs(workdir, sheet, stages)
    slide = sorted((workdir / "slides").iterdir())[0]
    os.utime(slide)  # now: newer than every output
    args = ["-n", "-q", "rules", "--workflow-profile", "none", *real_config(workdir, sheet, stages)]
    seconds, cpu, out = snakemake(workdir, snakefile, args)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    jobs = {k: int(v) for k, v in counts.items()}
    # That slide's jobs, its patient's CSV, the cohort tables, the default rule: nothing else.
    expected = dict.fromkeys(["select_level", "infer", "heatmap", "qc", "patient_csv"], 1)
    expected |= {"report": 1, "all": 1}
    if STAGES[stages]["features"]:
        expected |= {"features": 1, "features_table": 1}
    if STAGES[stages]["slide_model"]:
        expected |= {"slide_predict": 1, "attention_heatmap": 1, "predictions": 1}
    expected["total"] = sum(expected.values())
    return {"seconds": seconds, "cpu_s": cpu, "jobs": jobs, "exactly_its_jobs": jobs == expected}


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of log(time) against log(slides), least squares: 1.0 is linear growth."""
    logs = [math.log(n) for n in sizes], [math.log(t) for t in seconds]
    return statistics.linear_regression(*logs).slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--stages", choices=list(STAGES), default="all")
    parser.add_argument("--modes", nargs="+", choices=["quiet", "profile"], default=None)
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--workdir", help="keep generated files here (default: a temp dir)")
    parser.add_argument("--no-touched", action="store_true", help="skip the touched-slide run")
    args = parser.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dag_"))
    real_snakefile = REPO / "workflow" / "Snakefile"
    root.mkdir(parents=True, exist_ok=True)
    bare_snakefile = root / "bare.smk"
    bare_snakefile.write_text(BARE_SNAKEFILE)
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "stages": args.stages,
        "sizes": {},
    }
    print(f"stages: {args.stages}")
    print(f"{'slides':>7} {'mode':>8} {'real cpu':>9} {'bare cpu':>9} {'ratio':>6}  (wall: ratio)")
    for n in args.sizes:
        size_dir = root / f"n{n}"
        sheet = make_cohort(size_dir, n)
        per_mode: dict[str, dict[str, float]] = {}
        for mode, pair in variants(size_dir, sheet, args.stages).items():
            if args.modes and mode not in args.modes:
                continue
            wall: dict[str, list[float]] = {"real": [], "bare": []}
            cpu: dict[str, list[float]] = {"real": [], "bare": []}
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                for kind, snakefile in (("real", real_snakefile), ("bare", bare_snakefile)):
                    seconds, cpu_s, _ = snakemake(size_dir, snakefile, pair[kind])
                    wall[kind].append(seconds)
                    cpu[kind].append(cpu_s)
            fig = {
                f"{kind}_{what}": statistics.median(values[kind])
                for what, values in (("s", wall), ("cpu_s", cpu))
                for kind in ("real", "bare")
            }
            fig["ratio"] = fig["real_cpu_s"] / fig["bare_cpu_s"]
            fig["wall_ratio"] = fig["real_s"] / fig["bare_s"]
            per_mode[mode] = fig
            print(
                f"{n:>7} {mode:>8} {fig['real_cpu_s']:>9.2f} {fig['bare_cpu_s']:>9.2f} "
                f"{fig['ratio']:>6.2f}  ({fig['real_s']:.1f} s / {fig['bare_s']:.1f} s: "
                f"{fig['wall_ratio']:.2f})",
                flush=True,
            )
        entry: dict[str, object] = {"modes": per_mode}
        if not args.no_touched:
            touched = touched_plan(size_dir, real_snakefile, sheet, args.stages)
            entry["touched_one_slide"] = touched
            print(
                f"{n:>7} touched one slide: {touched['jobs']} in {touched['seconds']:.2f} s "
                f"({touched['cpu_s']:.2f} s CPU), "
                f"exactly its jobs: {touched['exactly_its_jobs']}",
                flush=True,
            )
        results["sizes"][str(n)] = entry
        if not args.workdir:
            shutil.rmtree(size_dir)
    if len(args.sizes) > 1:
        growth: dict[str, dict[str, float]] = {}
        for mode in next(iter(results["sizes"].values()))["modes"]:
            growth[mode] = {
                kind: growth_exponent(
                    args.sizes,
                    [results["sizes"][str(n)]["modes"][mode][f"{kind}_cpu_s"] for n in args.sizes],
                )
                for kind in ("real", "bare")
            }
            print(
                f"growth exponent of CPU time ({mode}): workflow {growth[mode]['real']:.2f}, "
                f"bare Snakefile {growth[mode]['bare']:.2f}"
            )
        results["growth_exponent"] = growth
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.workdir:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
