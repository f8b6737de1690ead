"""``wsiproc report``: the cohort QC table (``report.html``) and ``summary.tsv``."""

from __future__ import annotations

import argparse

from ..qc.report import write_cohort_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="cohort QC report from qc.json files",
        description="One line per slide with its flags and a link to its qc.html, "
        "plus the same numbers as summary.tsv.",
    )
    p.add_argument("qc_jsons", nargs="+", metavar="QC.json", help="qc.json of each slide")
    p.add_argument("--out-html", required=True, help="report.html to write")
    p.add_argument("--out-tsv", required=True, help="summary.tsv to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the cohort report; return 0."""
    write_cohort_report(args.qc_jsons, out_html=args.out_html, out_tsv=args.out_tsv)
    return 0
