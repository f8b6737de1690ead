"""``wsiproc status``: a run's counts of ok, flagged, failed and not-run slides; writes nothing.

The lines ``wsiproc report`` ends with, for the end of a successful run (whose report the
workflow has just written) and for checking a run by hand, during or after it.
"""

from __future__ import annotations

import argparse

from ..cohort import CohortStatus, cohort_status


def add_cohort_arguments(p: argparse.ArgumentParser) -> None:
    """``--sheet``, ``--results`` and ``--logs``: where a run's slides and files are."""
    p.add_argument("--sheet", required=True, help="sample sheet (TSV with patient, slide)")
    p.add_argument("--results", required=True, help="the workflow's results directory")
    p.add_argument("--logs", required=True, help="the workflow's log directory")
    p.add_argument(
        "--features",
        action="store_true",
        help="the run extracts features (config features.enabled): check that stage too",
    )
    p.add_argument(
        "--slide-model",
        action="store_true",
        help="the run has a slide model (config slide_model.enabled): check its stages too",
    )


def read_cohort(args: argparse.Namespace) -> CohortStatus:
    """The cohort status named by :func:`add_cohort_arguments`' arguments."""
    return cohort_status(
        args.sheet,
        args.results,
        args.logs,
        features=args.features,
        slide_model=args.slide_model,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``status`` subcommand."""
    p = subparsers.add_parser(
        "status",
        help="counts of ok, flagged, failed and not-run slides of a run",
        description="Print how many slides of the sheet are ok, flagged, failed (with their "
        "ids) or not run, and the path of report.html if it exists. Writes nothing.",
    )
    add_cohort_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary lines; return 0 whatever the slides' status."""
    cohort = read_cohort(args)
    report = cohort.layout.report_html
    print("\n".join(cohort.summary_lines(report if report.is_file() else None)))
    return 0
