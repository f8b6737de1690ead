"""``wsiproc patient_csv --out P.csv A.csv B.csv``: all windows of one patient in one CSV."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patient_csv", help="concatenate a patient's windows CSVs")
    p.add_argument("csvs", nargs="+", help="windows.csv files of the patient's slides")
    p.add_argument("--out", required=True, help="patient CSV to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..table import concat_csvs

    concat_csvs(args.csvs, args.out)
    return 0
