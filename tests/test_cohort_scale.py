"""The cohort aggregates on a generated 10,000-row sheet: linear time, bounded memory.

``wsiproc status``, ``report``, ``features-table`` and ``predictions`` read one small file per
slide and stage; none may read every window of the cohort or compare slides pairwise. Each runs
as a real process on a results tree laid out as the workflow leaves it (no slide is read): most
slides not run, every 20th finished, every 50th failed in infer. The same commands on a
1,000-row sheet of the same mix are the yardstick, measured in the same test, so the bounds are
ratios: ten times the slides may cost at most twenty times the CPU time (linear growth plus
noise; quadratic would be a hundred) and twice the peak memory.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wsiproc.cohort import Layout

QC_FORMAT = "wsiproc-qc/1"
FINISHED_EVERY = 20
FAILED_EVERY = 50
CHAIN = {
    "select_level": ["thumbnail.png", "mask.png", "level.json"],
    "infer": ["windows.csv", "windows.json"],
    "heatmap": ["heatmap.tif", "windows.geojson", "heatmap_rgb.tif"],
    "qc": ["qc.html", "qc.json"],
}


def write(path: Path, text: str, at: float) -> None:
    """``text`` at ``path`` with modification time ``at`` (seconds since the epoch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (at, at))


def make_cohort(root: Path, n_slides: int) -> tuple[Path, Layout]:
    """A sheet of ``n_slides`` (three per patient) and its results tree; returns both."""
    layout = Layout(root / "results", root / "logs")
    t0 = 1_700_000_000.0
    rows = []
    for i in range(n_slides):
        patient, slide = f"P{i // 3:05d}", f"S{i:05d}"
        rows.append(f"{patient}\t{slide}\tslides/{slide}.svs\t")
        if i % FINISHED_EVERY == 0:
            for step, (rule, names) in enumerate(CHAIN.items()):
                write(layout.slide_log(rule, patient, slide), f"{rule} done\n", t0 + step)
                for name in names:
                    text = (
                        json.dumps({"format": QC_FORMAT, "flags": []}) if name == "qc.json" else "x"
                    )
                    write(layout.slide_file(patient, slide, name), text, t0 + step + 0.5)
        elif i % FAILED_EVERY == 1:
            write(layout.slide_log("select_level", patient, slide), "done\n", t0)
            write(layout.slide_file(patient, slide, "level.json"), "{}", t0 + 0.5)
            write(layout.slide_log("infer", patient, slide), "error: unreadable tile\n", t0 + 1)
    sheet = root / "samples.tsv"
    sheet.write_text("patient\tslide\tpath\tmpp\n" + "\n".join(rows) + "\n")
    return sheet, layout


def aggregate_commands(sheet: Path, layout: Layout, out: Path) -> dict[str, list[str]]:
    """Each cohort-level command with the workflow's arguments, writing under ``out``."""
    common = ["--sheet", str(sheet), "--results", str(layout.results), "--logs", str(layout.logs)]
    return {
        "status": ["status", *common],
        "report": [
            "report",
            *common,
            "--out-html",
            str(out / "report.html"),
            "--out-tsv",
            str(out / "summary.tsv"),
        ],
        "features-table": ["features-table", *common, "--out", str(out / "features.tsv")],
        "predictions": [
            "predictions",
            *common,
            "--out",
            str(out / "predictions.tsv"),
            "--patients-out",
            str(out / "patient_predictions.tsv"),
        ],
    }


def run_measured(args: list[str], log: Path) -> tuple[float, int, str]:
    """Run ``wsiproc ARGS``; its CPU seconds, peak RSS in KiB and stdout (fails on exit != 0).

    os.wait4 gives this one child's resource use (getrusage would mix all children)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsiproc", *args], stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    assert code == 0, f"wsiproc {args[0]} exited {code}: {text}"
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss, text


def measure(root: Path, n_slides: int) -> dict[str, tuple[float, int, str]]:
    """Every aggregate over a generated cohort of ``n_slides``."""
    sheet, layout = make_cohort(root, n_slides)
    out = root / "out"
    out.mkdir()
    commands = aggregate_commands(sheet, layout, out)
    return {name: run_measured(args, root / f"{name}.log") for name, args in commands.items()}


def table(path: Path) -> list[dict[str, str]]:
    """The rows of a TSV written by an aggregate."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.slow
def test_aggregates_of_10000_slides_grow_linearly(tmp_path: Path) -> None:
    small = measure(tmp_path / "n1000", 1000)
    large = measure(tmp_path / "n10000", 10000)
    out = tmp_path / "n10000" / "out"

    finished = 10000 // FINISHED_EVERY
    failed = len([i for i in range(10000) if i % FINISHED_EVERY and i % FAILED_EVERY == 1])
    not_run = 10000 - finished - failed
    status_line = large["status"][2].splitlines()[0]
    expected = f"wsiproc: {finished} ok, 0 flagged, {not_run} not run, {failed} failed: S00001,"
    assert status_line.startswith(expected) and status_line.endswith("(+180 more)")
    summary = table(out / "summary.tsv")
    assert len(summary) == 10000
    assert sum(r["status"] == "failed" for r in summary) == failed
    assert len(table(out / "features.tsv")) == 10000
    assert len(table(out / "predictions.tsv")) == 10000
    page = (out / "report.html").read_text()
    assert len(set(re.findall(r">(S\d{5})<", page))) == 10000

    for name in small:
        cpu_small, rss_small, _ = small[name]
        cpu_large, rss_large, _ = large[name]
        assert cpu_large <= 20 * cpu_small, f"{name}: {cpu_large:.1f} s vs {cpu_small:.1f} s"
        assert rss_large <= 2 * rss_small, f"{name}: {rss_large} KiB vs {rss_small} KiB"
