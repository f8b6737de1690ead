"""``wsiproc report``: the cohort QC table (``report.html``) and ``summary.tsv``.

Reads the sample sheet and the workflow's directories rather than one argument per slide, so a
cohort of any size is one short command line, and every slide of the sheet gets a line:
finished, failed (stage, error, log) or not run.
"""

from __future__ import annotations

import argparse

from ..qc.report import write_cohort_report
from .status import add_cohort_arguments, read_cohort


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="cohort QC report of every slide of a sample sheet",
        description="One line per slide of the sheet with its status (ok, flagged, failed, "
        "not run), its QC numbers and flags or its failed stage, error and log, a table of "
        "patients, and the same as summary.tsv. Prints the counts and the report's path.",
    )
    add_cohort_arguments(p)
    p.add_argument("--out-html", required=True, help="report.html to write")
    p.add_argument("--out-tsv", required=True, help="summary.tsv to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the cohort report and print the summary lines; return 0 (failed slides too)."""
    cohort = read_cohort(args)
    write_cohort_report(cohort, out_html=args.out_html, out_tsv=args.out_tsv)
    print("\n".join(cohort.summary_lines(args.out_html)))
    return 0
