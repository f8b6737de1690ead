"""``wsiproc predictions``: every slide's slide-model result and one row per patient, as TSVs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``predictions`` subcommand."""
    p = sub.add_parser(
        "predictions",
        help="cohort table of slide-model predictions and per-patient means",
        description=(
            "Read {results}/{patient}/{slide}/slide.json and the slide_predict logs of every "
            "slide in the sample sheet; write one row per slide (class probabilities, predicted "
            "class, status) and one per patient (mean of its slides' probabilities)."
        ),
    )
    p.add_argument("--sheet", required=True, help="sample sheet (TSV with patient, slide)")
    p.add_argument("--results", required=True, help="the workflow's results directory")
    p.add_argument("--logs", required=True, help="the workflow's logs directory")
    p.add_argument("--out", required=True, help="predictions.tsv to write (one row per slide)")
    p.add_argument("--patients-out", required=True, help="per-patient TSV to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write both tables; print the counts."""
    from ..cohort import Layout, read_sheet
    from ..slidemodel.cohort import slide_result, write_tables

    layout = Layout(Path(args.results), Path(args.logs))
    results = [slide_result(layout, p, s) for p, s in read_sheet(args.sheet)]
    write_tables(results, args.out, args.patients_out)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"predictions: {len(results)} slides ({summary}) -> {args.out}")
    return 0
