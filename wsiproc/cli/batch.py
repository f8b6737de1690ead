"""``wsiproc batch --record R --item SLIDE ARGS ... STAGE -- COMMON``: several slides of one
stage in one process, the model loaded once (``features.slides_per_job``,
``slide_model.slides_per_job``).

Each ``--item`` is one slide: its id and its own ``wsiproc STAGE`` arguments as one shell-quoted
string (input file, staged ``--out`` ...); ``--pre`` a whole command run for that slide first
(its ``level`` selection); the arguments after ``--`` are shared by every slide.
A slide's error is recorded and the others run (exit 0); a model that does not load fails
the batch (exit non-zero, no record).
"""

from __future__ import annotations

import argparse
import shlex

BATCH_STAGES = ("features", "slide-predict")
PRE_STAGES = ("level",)
"""What ``--pre`` may run before a slide's stage: its level selection (the tissue mask)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``batch`` subcommand."""
    p = sub.add_parser(
        "batch",
        help="run a stage for several slides in one process (one model load)",
        description=(
            "Run 'wsiproc STAGE' for each --item in this process: the encoder or slide model "
            "is loaded once. Writes the batch record (slide, status, seconds, error) last."
        ),
    )
    p.add_argument("--record", required=True, help="batch record TSV to write")
    p.add_argument(
        "--item",
        nargs=2,
        action="append",
        required=True,
        metavar=("SLIDE", "ARGS"),
        help="one slide: its id and its own STAGE arguments (one shell-quoted string)",
    )
    p.add_argument(
        "--pre",
        nargs=2,
        action="append",
        default=[],
        metavar=("SLIDE", "COMMAND"),
        help="a whole command of another stage ('level SLIDE_FILE ...') run for SLIDE first; "
        "its failure is the slide's (repeatable, in order)",
    )
    p.add_argument(
        "--skip-failed-in",
        action="append",
        default=[],
        metavar="RECORD",
        help="an earlier stage's batch record: its failed slides are skipped (repeatable)",
    )
    # After the options: argparse gives a REMAINDER everything after the first positional.
    p.add_argument("stage", choices=BATCH_STAGES, help="the stage run for each slide")
    p.add_argument(
        "common", nargs=argparse.REMAINDER, help="-- then the arguments every slide gets"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.runner import Item, failed_slides, run_batch
    from ..errors import ConfigError

    common = args.common[1:] if args.common[:1] == ["--"] else args.common
    pre: dict[str, list[list[str]]] = {}
    for slide, command in args.pre:
        argv = shlex.split(command)
        if argv[:1] not in ([s] for s in PRE_STAGES):
            raise ConfigError("--pre", f"{slide}: must run one of {', '.join(PRE_STAGES)}")
        pre.setdefault(slide, []).append(argv)
    items = [Item(slide, shlex.split(own), pre.get(slide, [])) for slide, own in args.item]
    run_batch(
        args.stage,
        items,
        common,
        args.record,
        skip=failed_slides(args.skip_failed_in),
    )
    return 0
