"""``wsiproc demo DIR``: write a small synthetic cohort that the workflow runs end to end.

Lets a new user (and CI) exercise every stage without real slides; generation lives in
:mod:`wsiproc.demo`, this module only parses arguments and says what to run next.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo`` subcommand on ``subparsers``."""
    parser = subparsers.add_parser(
        "demo",
        help="write a synthetic demo cohort (slides, sample sheet, config)",
        description=(
            "Write synthetic slides (Aperio SVS at 20x and 40x, generic pyramidal TIFF, a "
            "glass-only slide, a pen-marked slide, a slide without mpp) to DIR/slides, plus "
            "DIR/samples.tsv and DIR/config.yaml for the Snakemake workflow."
        ),
    )
    parser.add_argument("directory", metavar="DIR", type=Path, help="output directory")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives identical files"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the cohort and print the sheet, the config and the command that runs it."""
    from ..demo import DEMO_SLIDES, demo_cohort

    config = demo_cohort(args.directory, seed=args.seed)
    directory = config.parent
    print(f"wrote {len(DEMO_SLIDES)} slides to {directory / 'slides'}")
    print(f"sample sheet: {directory / 'samples.tsv'}")
    print(f"config:       {config}")
    print("run the workflow from the repository root with:")
    print(f"  snakemake --cores 2 --configfile {config}")
    print("then look at the slides and their heatmaps with:")
    print(f"  wsiproc view {directory / 'results'}")
    return 0
