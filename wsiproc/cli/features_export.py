"""``wsiproc features-export features.h5 --to stamp --out DIR``: a tool's layout from the file."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features-export", help="write STAMP / slideflow / CLAM files from a features.h5"
    )
    p.add_argument("features", nargs="+", help="features.h5 files written by `wsiproc features`")
    p.add_argument(
        "--to",
        action="append",
        required=True,
        choices=("stamp", "slideflow", "clam"),
        help="the tool's layout (repeatable)",
    )
    p.add_argument("--out", required=True, help="directory; each tool writes under OUT/<tool>/")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..features.export import export_features

    for path in args.features:
        export_features(path, list(dict.fromkeys(args.to)), args.out)
    return 0
