"""``wsiproc info SLIDE``: the slide's metadata as JSON."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a slide's metadata as JSON")
    p.add_argument("slide", help="slide file (any format OpenSlide reads)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..slide import Slide

    with Slide(args.slide) as slide:
        print(json.dumps(slide.info.to_dict(), indent=1))
    return 0
