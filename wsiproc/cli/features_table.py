"""``wsiproc features-table``: the cohort's features.tsv (N, D, encoder, status per slide)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features-table", help="list every slide's features.h5: N, D, status")
    p.add_argument("--sheet", required=True, help="the sample sheet (patient, slide columns)")
    p.add_argument("--results", required=True, help="results directory of the workflow")
    p.add_argument("--logs", required=True, help="log directory of the workflow")
    p.add_argument("--out", required=True, help="features.tsv to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cohort import FAILED, OK, Layout
    from ..features.cohort import write_features_table

    rows = write_features_table(args.sheet, Layout(Path(args.results), Path(args.logs)), args.out)
    counts = {s: sum(r.status == s for r in rows) for s in (OK, FAILED)}
    failed = [r.slide for r in rows if r.status == FAILED]
    line = f"wsiproc: features: {counts[OK]} ok, {len(rows) - sum(counts.values())} not run"
    print(line + (f", {counts[FAILED]} failed: {', '.join(failed[:20])}" if failed else ""))
    return 0
