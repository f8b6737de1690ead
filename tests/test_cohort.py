"""Tests of wsiproc.cohort and the ``status``/``report`` commands on generated directory states.

Each state is what the workflow leaves on disk after some history (success, failure, kill,
rerun), laid out as the workflow does and with explicit modification times, so no Snakemake
run is needed. Snakemake deletes a job's outputs and log before the job runs and its outputs
again if it fails; the helpers below do the same.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from wsiproc import cohort
from wsiproc.cli import main
from wsiproc.cohort import FAILED, FLAGGED, NOT_RUN, OK, STOPPED, Layout
from wsiproc.errors import InputTableError

QC_FORMAT = "wsiproc-qc/1"
T0 = 1_700_000_000.0  # a fixed past time; every file gets T0 + a few seconds


def write(path: Path, text: str = "", at: float = 0.0) -> Path:
    """Write ``text`` to ``path`` and set its modification time to ``T0 + at``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (T0 + at, T0 + at))
    return path


def sheet(root: Path, rows: list[tuple[str, str]]) -> Path:
    """A sample sheet with the workflow's columns (path and mpp are ignored by cohort)."""
    lines = ["patient\tslide\tpath\tmpp"] + [f"{p}\t{s}\tslides/{s}.svs\t" for p, s in rows]
    return write(root / "samples.tsv", "\n".join(lines) + "\n")


def run_stage(layout: Layout, rule: str, patient: str, slide: str, at: float, **qc) -> None:
    """One successful job of ``rule``: its log, then its outputs (as the workflow names them)."""
    write(layout.slide_log(rule, patient, slide), f"{rule} done\n", at)
    files = {
        "select_level": ["thumbnail.png", "mask.png", "level.json"],
        "infer": ["windows.csv", "windows.json"],
        "heatmap": ["heatmap.tif", "windows.geojson", "heatmap_rgb.tif"],
        "qc": ["qc.html", "qc.json"],
    }[rule]
    for name in files:
        text = json.dumps({"format": QC_FORMAT, "flags": [], **qc}) if name == "qc.json" else "x"
        write(layout.slide_file(patient, slide, name), text, at + 0.5)


def fail_stage(layout: Layout, rule: str, patient: str, slide: str, at: float, log: str) -> None:
    """One failed job of ``rule``: outputs deleted, the log holds what the command printed."""
    marker = next(s.marker for s in cohort.STAGES if s.rule == rule)
    layout.slide_file(patient, slide, marker).unlink(missing_ok=True)
    write(layout.slide_log(rule, patient, slide), log, at)


def finish_slide(layout: Layout, patient: str, slide: str, at: float = 0.0, **qc) -> None:
    """The whole chain of one slide, done in order from ``at`` on."""
    for i, rule in enumerate(("select_level", "infer", "heatmap", "qc")):
        run_stage(layout, rule, patient, slide, at + i, **qc)


def finish_patient(layout: Layout, patient: str, at: float) -> None:
    """A successful patient_csv job."""
    write(layout.patient_log(patient), "", at)
    write(layout.patient_csv(patient), "x", at + 0.5)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """Empty results and log directories in the workflow's layout."""
    return Layout(tmp_path / "results", tmp_path / "logs")


# --- one slide ------------------------------------------------------------------------------
def test_finished_slides_are_ok_or_flagged(layout: Layout) -> None:
    finish_slide(layout, "P1", "S1")
    finish_slide(layout, "P1", "S2", flags=["pen_marks"])
    ok = cohort.slide_status(layout, "P1", "S1")
    flagged = cohort.slide_status(layout, "P1", "S2")
    assert (ok.status, ok.stage, ok.error, ok.log) == (OK, None, None, None)
    assert ok.qc_json == layout.slide_file("P1", "S1", "qc.json")
    assert (flagged.status, flagged.flags) == (FLAGGED, ("pen_marks",))


def test_slide_without_files_is_not_run(layout: Layout) -> None:
    status = cohort.slide_status(layout, "P1", "S1")
    assert (status.status, status.stage, status.qc_json) == (NOT_RUN, None, None)


def test_failed_stage_gives_its_last_error_line_and_log(layout: Layout) -> None:
    text = "reading\nerror: first\nerror: /data/S1.svs: file is empty (0 bytes)\n  detail\n"
    fail_stage(layout, "select_level", "P1", "S1", 0, text)
    status = cohort.slide_status(layout, "P1", "S1")
    assert status.status == FAILED and status.stage == "select_level"
    assert status.error == "/data/S1.svs: file is empty (0 bytes)"
    assert status.log == layout.slide_log("select_level", "P1", "S1")


def test_failure_behind_older_outputs_of_later_stages_is_reported(layout: Layout) -> None:
    """A rerun fails in infer; heatmap and qc keep their files (and qc.json) from before."""
    finish_slide(layout, "P1", "S1", at=0)
    run_stage(layout, "select_level", "P1", "S1", at=10)
    fail_stage(layout, "infer", "P1", "S1", 11, "error: S1.svs: corrupt tile\n")
    assert layout.slide_file("P1", "S1", "qc.json").exists()
    status = cohort.slide_status(layout, "P1", "S1")
    assert (status.status, status.stage, status.error) == (FAILED, "infer", "S1.svs: corrupt tile")


def test_failed_sibling_is_reported_even_behind_a_newer_qc_json(layout: Layout) -> None:
    """heatmap and qc both follow infer: a heatmap failure stays one when qc succeeds later."""
    run_stage(layout, "select_level", "P1", "S1", 0)
    run_stage(layout, "infer", "P1", "S1", 1)
    fail_stage(layout, "heatmap", "P1", "S1", 2, "error: windows.csv: no output column\n")
    run_stage(layout, "qc", "P1", "S1", 3)
    status = cohort.slide_status(layout, "P1", "S1")
    assert (status.status, status.stage) == (FAILED, "heatmap")


def test_killed_stage_without_error_line_stopped(layout: Layout) -> None:
    run_stage(layout, "select_level", "P1", "S1", 0)
    fail_stage(layout, "infer", "P1", "S1", 1, "loading model\n")
    status = cohort.slide_status(layout, "P1", "S1")
    assert (status.status, status.stage, status.error) == (FAILED, "infer", STOPPED)
    assert STOPPED == "stopped without an error message (killed or interrupted?)"


def test_first_failed_stage_in_chain_order_wins(layout: Layout) -> None:
    """infer's failure log of an earlier run stays, but select_level now fails first."""
    run_stage(layout, "select_level", "P1", "S1", 0)
    fail_stage(layout, "infer", "P1", "S1", 1, "error: old infer failure\n")
    fail_stage(layout, "select_level", "P1", "S1", 5, "error: new level failure\n")
    status = cohort.slide_status(layout, "P1", "S1")
    assert (status.stage, status.error) == ("select_level", "new level failure")


def test_successful_rerun_after_failure_is_ok(layout: Layout) -> None:
    """The rerun truncates the log; output printed after the marker makes the log newer."""
    run_stage(layout, "select_level", "P1", "S1", 0)
    fail_stage(layout, "infer", "P1", "S1", 1, "error: S1.svs: corrupt tile\n")
    finish_slide(layout, "P1", "S1", at=10)
    write(layout.slide_log("infer", "P1", "S1"), "wrote windows.csv\n", at=11.9)
    assert cohort.slide_status(layout, "P1", "S1").status == OK


def test_error_log_is_a_failure_unless_the_marker_is_newer(layout: Layout) -> None:
    """An error log beside a marker: older marker = failed run (kept outputs), newer = rerun."""
    finish_slide(layout, "P1", "S1", at=0)
    write(layout.slide_log("heatmap", "P1", "S1"), "error: disk full\n", at=20)
    assert cohort.slide_status(layout, "P1", "S1").stage == "heatmap"
    run_stage(layout, "heatmap", "P1", "S1", at=30)
    write(layout.slide_log("heatmap", "P1", "S1"), "error: disk full\n", at=29)
    assert cohort.slide_status(layout, "P1", "S1").status == OK


def test_qc_json_older_than_its_inputs_is_not_run(layout: Layout) -> None:
    """infer reran, the run stopped before qc: the old qc.json is not current."""
    finish_slide(layout, "P1", "S1", at=0)
    run_stage(layout, "infer", "P1", "S1", at=10)
    run_stage(layout, "heatmap", "P1", "S1", at=11)
    assert cohort.slide_status(layout, "P1", "S1").status == NOT_RUN


def test_unreadable_qc_json_fails_at_qc_naming_it(layout: Layout) -> None:
    finish_slide(layout, "P1", "S1")
    qc_json = write(layout.slide_file("P1", "S1", "qc.json"), "{}", at=10)
    status = cohort.slide_status(layout, "P1", "S1")
    assert (status.status, status.stage) == (FAILED, "qc")
    assert str(qc_json) in status.error


# --- patients ----------------------------------------------------------------------------------
def test_patient_with_finished_slides_and_csv_is_ok(layout: Layout) -> None:
    finish_slide(layout, "P1", "S1")
    finish_patient(layout, "P1", 10)
    slides = [cohort.slide_status(layout, "P1", "S1")]
    patient = cohort.patient_status(layout, "P1", slides)
    assert (patient.status, patient.csv, patient.reason) == (OK, layout.patient_csv("P1"), None)


def test_patient_of_failed_slide_has_no_csv_and_a_stale_one_is_named(layout: Layout) -> None:
    finish_slide(layout, "P1", "S1")
    finish_slide(layout, "P1", "S2")
    finish_patient(layout, "P1", 10)
    fail_stage(layout, "infer", "P1", "S2", 20, "error: S2.svs: corrupt tile\n")
    slides = [cohort.slide_status(layout, "P1", s) for s in ("S1", "S2")]
    patient = cohort.patient_status(layout, "P1", slides)
    assert patient.status == FAILED and patient.csv is None
    assert patient.reason.startswith("slide S2 failed")
    assert f"{layout.patient_csv('P1')} is stale" in patient.reason
    assert patient.stale_csv == layout.patient_csv("P1")
    assert layout.patient_csv("P1").exists()  # reported, never deleted


def test_patient_csv_older_than_a_windows_csv_is_stale(layout: Layout) -> None:
    finish_slide(layout, "P1", "S1", at=0)
    finish_patient(layout, "P1", 10)
    finish_slide(layout, "P1", "S1", at=20)
    patient = cohort.patient_status(layout, "P1", [cohort.slide_status(layout, "P1", "S1")])
    assert patient.status == NOT_RUN and patient.csv is None
    assert "stale" in patient.reason and "S1" in patient.reason


def test_patient_csv_failure_or_absence_is_the_reason(layout: Layout) -> None:
    finish_slide(layout, "P1", "S1")
    slides = [cohort.slide_status(layout, "P1", "S1")]
    assert cohort.patient_status(layout, "P1", slides).reason == "patient_csv not run"
    write(layout.patient_log("P1"), "error: P1.csv: no space left on device\n", at=10)
    patient = cohort.patient_status(layout, "P1", slides)
    assert patient.status == FAILED
    assert "P1.csv: no space left on device" in patient.reason
    assert str(layout.patient_log("P1")) in patient.reason


# --- the cohort and its lines ----------------------------------------------------------------
def test_cohort_counts_and_summary_lines(tmp_path: Path, layout: Layout) -> None:
    rows = [("P1", "S1"), ("P1", "S2"), ("P2", "S3"), ("P3", "S4"), ("P3", "S5")]
    finish_slide(layout, "P1", "S1")
    finish_slide(layout, "P1", "S2", flags=["blurry"])
    finish_patient(layout, "P1", 10)
    fail_stage(layout, "select_level", "P2", "S3", 0, "error: S3.svs: file is empty\n")
    run_stage(layout, "select_level", "P3", "S5", 0)
    fail_stage(layout, "infer", "P3", "S5", 1, "error: S5.svs: corrupt tile\n")
    result = cohort.cohort_status(sheet(tmp_path, rows), layout.results, layout.logs)
    assert [s.slide for s in result.slides] == ["S1", "S2", "S3", "S4", "S5"]
    assert [s.status for s in result.slides] == [OK, FLAGGED, FAILED, NOT_RUN, FAILED]
    assert [(p.patient, p.status) for p in result.patients] == [
        ("P1", OK),
        ("P2", FAILED),
        ("P3", FAILED),
    ]
    assert result.patients[2].reason == "slide S5 failed; slide S4 not run"
    assert result.summary_lines(layout.report_html) == [
        "wsiproc: 1 ok, 1 flagged, 1 not run, 2 failed: S3, S5",
        f"wsiproc: report: {os.path.abspath(layout.report_html)}",
    ]


def test_summary_line_without_failures_and_with_many(tmp_path: Path, layout: Layout) -> None:
    finish_slide(layout, "P1", "S1")
    result = cohort.cohort_status(sheet(tmp_path, [("P1", "S1")]), layout.results, layout.logs)
    assert result.summary_lines() == ["wsiproc: 1 ok, 0 flagged, 0 failed"]
    ids = [f"S{i:02d}" for i in range(cohort.MAX_LISTED_IDS + 3)]
    for s in ids:
        fail_stage(layout, "select_level", "P1", s, 0, "error: bad\n")
    result = cohort.cohort_status(
        sheet(tmp_path, [("P1", s) for s in ids]), layout.results, layout.logs
    )
    listed = ", ".join(ids[: cohort.MAX_LISTED_IDS])
    assert result.summary_lines() == [f"wsiproc: 0 ok, 0 flagged, 23 failed: {listed} (+3 more)"]


def test_sheet_without_slide_column_is_one_error(tmp_path: Path) -> None:
    path = write(tmp_path / "samples.tsv", "patient\tpath\nP1\ta.svs\n")
    with pytest.raises(InputTableError, match="no column slide"):
        cohort.read_sheet(path)
    assert cohort.read_sheet(sheet(tmp_path, [("P1", "S1")])) == [("P1", "S1")]


# --- the commands ------------------------------------------------------------------------------
def cohort_args(tmp_path: Path, layout: Layout, rows: list[tuple[str, str]]) -> list[str]:
    """``--sheet --results --logs`` for ``rows``."""
    where = {"--sheet": sheet(tmp_path, rows), "--results": layout.results, "--logs": layout.logs}
    return [str(x) for pair in where.items() for x in pair]


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_status_prints_the_lines_and_writes_nothing(
    tmp_path: Path, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    finish_slide(layout, "P1", "S1")
    fail_stage(layout, "select_level", "P2", "S2", 0, "error: S2.svs: file is empty\n")
    args = cohort_args(tmp_path, layout, [("P1", "S1"), ("P2", "S2")])
    before = tree(tmp_path)
    assert main(["status", *args]) == 0
    assert capsys.readouterr().out == "wsiproc: 1 ok, 0 flagged, 1 failed: S2\n"
    assert tree(tmp_path) == before
    write(layout.report_html, "<html></html>")
    assert main(["status", *args]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        f"wsiproc: report: {os.path.abspath(layout.report_html)}"
    )


def test_report_lists_every_slide_of_the_sheet(
    tmp_path: Path, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    finish_slide(layout, "P1", "S1", windows_processed=7)
    finish_patient(layout, "P1", 10)
    finish_slide(layout, "P2", "S2", windows_processed=5)
    fail_stage(layout, "infer", "P2", "S2", 20, "error: /data/S2.svs: corrupt tile\n")
    args = cohort_args(tmp_path, layout, [("P1", "S1"), ("P2", "S2"), ("P3", "S3")])
    html, tsv = layout.report_html, layout.summary_tsv
    assert main(["report", *args, "--out-html", str(html), "--out-tsv", str(tsv)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "wsiproc: 1 ok, 0 flagged, 1 not run, 1 failed: S2",
        f"wsiproc: report: {os.path.abspath(html)}",
    ]
    with open(tsv, newline="") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert [rows[s]["status"] for s in ("S1", "S2", "S3")] == [OK, FAILED, NOT_RUN]
    assert rows["S1"]["windows_processed"] == "7" and rows["S1"]["flags"] == "OK"
    # S2's qc.json is left from an earlier run: its numbers are not shown as current.
    assert rows["S2"]["windows_processed"] == "NA" and rows["S2"]["qc_html"] == "NA"
    assert rows["S2"]["failed_stage"] == "infer"
    assert rows["S2"]["error"] == "/data/S2.svs: corrupt tile"
    assert rows["S2"]["log"] == str(layout.slide_log("infer", "P2", "S2"))
    assert rows["S3"]["failed_stage"] == "NA" and rows["S3"]["patient"] == "P3"
    page = html.read_text()
    assert "3 slides: 1 ok, 0 flagged, 1 not run, 1 failed: S2" in page
    assert "/data/S2.svs: corrupt tile" in page
    assert 'href="../logs/infer/P2/S2.log"' in page
    assert 'href="P1/P1.csv"' in page
    assert "none: slide S2 failed" in page and "none: slide S3 not run" in page
