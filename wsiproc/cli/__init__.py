"""The ``wsiproc`` command line: one subcommand per pipeline stage.

Each stage lives in ``cli/<stage>.py`` with ``add_parser(subparsers)`` and ``run(args) -> int``;
:func:`main` turns any :class:`~wsiproc.errors.WsiprocError` into one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import WsiprocError

STAGES = (
    "info",
    "level",
    "infer",
    "features",
    "features_export",
    "features_table",
    "patient_csv",
    "heatmap",
    "slide_predict",
    "predictions",
    "qc",
    "report",
    "status",
    "demo",
    "view",
    "batch",
    "batch_finish",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every stage's subparser (or just ``only``'s, to start fast)."""
    parser = argparse.ArgumentParser(
        prog="wsiproc",
        description="Whole-slide images to per-window model outputs, heatmaps and QC.",
    )
    parser.add_argument("--version", action="version", version=f"wsiproc {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES if only is None else (only,):
        module = importlib.import_module(f"{__name__}.{stage}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; return the process exit code (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Importing one stage's module, not all nine, saves most of a second per job.
    first = argv[0].replace("-", "_") if argv else None  # slide-predict -> cli/slide_predict.py
    parser = build_parser(first if first in STAGES else None)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the CLI's one catch-all
        line, code = failure(exc)
        print(f"error: {line}", file=sys.stderr)
        return code


def failure(exc: BaseException) -> tuple[str, int]:
    """What a stage's exception makes of its run: the ``error:`` line's text and the exit code
    (also per slide inside ``wsiproc batch``, so a slide's error reads the same there)."""
    if isinstance(exc, WsiprocError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    return f"internal error: {type(exc).__name__}: {exc}", 70
