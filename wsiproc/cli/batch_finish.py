"""``wsiproc batch-finish --record R --slide S --staged DIR --final DIR OUTPUT...``: one slide
of a batch into place (hard links of its staged files), or its recorded error as this step's
one-line failure (:mod:`wsiproc.batch.finish`)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``batch-finish`` subcommand."""
    p = sub.add_parser(
        "batch-finish",
        help="put one slide's staged batch outputs in place, or fail with its recorded error",
    )
    p.add_argument("--record", required=True, help="the batch record (wsiproc batch)")
    p.add_argument("--slide", required=True, help="slide id, as in the record")
    p.add_argument("--staged", required=True, help="the slide's staging directory")
    p.add_argument("--final", required=True, help="the slide's results directory")
    p.add_argument("outputs", nargs="+", help="final files under --final, the marker last")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.finish import finish_slide

    finish_slide(args.record, args.slide, args.staged, args.final, args.outputs)
    print(f"batch-finish: {args.slide}: {len(args.outputs)} files in place from {args.staged}")
    return 0
