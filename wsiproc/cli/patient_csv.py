"""``wsiproc patient_csv``: all windows of one patient in one CSV.

The workflow names the patient and the sample sheet (``--sheet --results --patient``) rather
than one argument per slide: a shell command is one string of at most 128 KiB on Linux
(``MAX_ARG_STRLEN``), which a patient with a few thousand slides' paths would exceed. Listing
the CSVs by hand (``--out P.csv A.csv B.csv``) stays possible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cohort import Layout, read_sheet
from ..errors import ConfigError, InputTableError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``patient_csv`` subcommand."""
    p = sub.add_parser(
        "patient_csv",
        help="concatenate a patient's windows CSVs",
        description="Concatenate the windows.csv of every slide of one patient into one CSV "
        "(one header). Either name the patient and the run (--sheet, --results, --patient: "
        "its slides in sheet order, each {results}/{patient}/{slide}/windows.csv) or list "
        "the CSV files.",
    )
    p.add_argument("csvs", nargs="*", help="windows.csv files (instead of --sheet)")
    p.add_argument("--sheet", help="sample sheet (TSV with patient, slide)")
    p.add_argument("--results", help="the workflow's results directory (with --sheet)")
    p.add_argument("--patient", help="the patient whose slides to join (with --sheet)")
    p.add_argument("--out", required=True, help="patient CSV to write")
    p.set_defaults(run=run)


def sheet_windows(sheet: str | Path, results: str | Path, patient: str) -> list[Path]:
    """``windows.csv`` of every slide of ``patient`` in sheet order, each checked to exist.

    Raises
    ------
    InputTableError
        The sheet lists no slide of ``patient``, or one slide has no ``windows.csv`` (named).
    """
    slides = [slide for who, slide in read_sheet(sheet) if who == patient]
    if not slides:
        raise InputTableError(str(sheet), f"no slide of patient {patient!r}")
    # Layout's log folder is not used here: only the results' file names are.
    layout = Layout(Path(results), Path(results))
    paths = [layout.slide_file(patient, slide, "windows.csv") for slide in slides]
    for slide, path in zip(slides, paths, strict=True):
        if not path.is_file():
            problem = f"no windows.csv for slide {slide} of patient {patient} (infer not run?)"
            raise InputTableError(str(path), problem)
    return paths


def run(args: argparse.Namespace) -> int:
    """Write the patient CSV from the sheet's slides or from the listed CSVs."""
    from ..table import concat_csvs

    by_sheet = [args.sheet, args.results, args.patient]
    if args.csvs and any(v is not None for v in by_sheet):
        problem = "give either --sheet, --results and --patient, or CSV files, not both"
        raise ConfigError("patient_csv", problem)
    if args.csvs:
        concat_csvs(args.csvs, args.out)
        return 0
    if any(v is None for v in by_sheet):
        missing = [
            f
            for f, v in zip(("--sheet", "--results", "--patient"), by_sheet, strict=True)
            if v is None
        ]
        problem = f"give {', '.join(missing)} (or CSV files instead of --sheet)"
        raise ConfigError("patient_csv", problem)
    concat_csvs(sheet_windows(args.sheet, args.results, args.patient), args.out)
    return 0
