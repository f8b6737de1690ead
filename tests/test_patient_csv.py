"""The ``patient_csv`` command: a patient's slides from the sample sheet, or CSVs listed by hand.

Issue 9: the workflow passes the sheet and the patient, never one argument per slide, so a
patient with thousands of slides fits on one command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiproc.cli import main
from wsiproc.cohort import Layout
from wsiproc.table import META_COLUMNS

HEADER = ",".join([*META_COLUMNS, "mean_r"])


def windows_csv(layout: Layout, patient: str, slide: str, rows: int) -> Path:
    """A windows.csv of ``rows`` lines in the workflow's layout; the slide id in every line."""
    path = layout.slide_file(patient, slide, "windows.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = len(META_COLUMNS) - 2
    lines = [f"{patient},{slide}," + ",".join(["0"] * fields) + f",{i}" for i in range(rows)]
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Layout]:
    """A sheet of two patients (P1: S3, S1, S2 in this order; P2: S9) and their CSVs."""
    layout = Layout(tmp_path / "results", tmp_path / "logs")
    rows = [("P1", "S3"), ("P2", "S9"), ("P1", "S1"), ("P1", "S2")]
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("patient\tslide\tpath\n" + "".join(f"{p}\t{s}\t{s}.svs\n" for p, s in rows))
    for i, (patient, slide) in enumerate(rows):
        windows_csv(layout, patient, slide, rows=i + 1)
    return sheet, layout


def sheet_argv(sheet: Path, layout: Layout, patient: str, out: Path) -> list[str]:
    """``patient_csv`` in the workflow's form."""
    return [
        "patient_csv",
        *("--sheet", str(sheet), "--results", str(layout.results)),
        *("--patient", patient, "--out", str(out)),
    ]


def slides_in(path: Path) -> list[str]:
    """The slide id of each data line of a CSV."""
    return [line.split(",")[1] for line in path.read_text().splitlines()[1:]]


def test_sheet_form_joins_the_patients_slides_in_sheet_order(run, tmp_path: Path) -> None:
    sheet, layout = run
    out = tmp_path / "P1.csv"
    assert main(sheet_argv(sheet, layout, "P1", out)) == 0
    assert out.read_text().splitlines()[0] == HEADER
    assert slides_in(out) == ["S3"] * 1 + ["S1"] * 3 + ["S2"] * 4


def test_listed_csvs_give_the_same_file_as_the_sheet(run, tmp_path: Path) -> None:
    sheet, layout = run
    by_sheet, by_hand = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(sheet_argv(sheet, layout, "P1", by_sheet)) == 0
    paths = [str(layout.slide_file("P1", s, "windows.csv")) for s in ("S3", "S1", "S2")]
    assert main(["patient_csv", "--out", str(by_hand), *paths]) == 0
    assert by_hand.read_bytes() == by_sheet.read_bytes()


def test_missing_windows_csv_is_one_error_line_naming_it(
    run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet, layout = run
    missing = layout.slide_file("P1", "S1", "windows.csv")
    missing.unlink()
    out = tmp_path / "P1.csv"
    assert main(sheet_argv(sheet, layout, "P1", out)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {missing}: no windows.csv for slide S1 of patient P1 (infer not run?)"]
    assert not out.exists()


def test_patient_not_in_the_sheet_is_one_error_line(
    run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet, layout = run
    assert main(sheet_argv(sheet, layout, "P7", tmp_path / "P7.csv")) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {sheet}: no slide of patient 'P7'"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --sheet, --results, --patient (or CSV files instead of --sheet)"),
        (["--sheet", "s.tsv"], "give --results, --patient (or CSV files instead of --sheet)"),
        (
            ["--sheet", "s.tsv", "a.csv"],
            "give either --sheet, --results and --patient, or CSV files, not both",
        ),
    ],
)
def test_neither_or_both_forms_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["patient_csv", "--out", str(tmp_path / "x.csv"), *extra]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: patient_csv: {message}"]
