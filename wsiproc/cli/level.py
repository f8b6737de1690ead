"""``wsiproc level SLIDE --out level.json``: choose the level, save thumbnail and tissue mask.

With ``--on-read-error skip`` an undecodable thumbnail is not fatal: the outputs still appear
(grey thumbnail, an *unknown* mask, ``tissue_unknown`` in level.json), so a workflow reaches
``infer``, which then processes every window with tissue NaN.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_level_options, level_spec

if TYPE_CHECKING:
    import numpy as np

PLACEHOLDER_GREY = 200
"""Grey of the thumbnail written in place of one that cannot be decoded."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("level", help="choose the pyramid level; write level.json, thumbnail, mask")
    p.add_argument("slide", help="slide file")
    p.add_argument("--out", required=True, help="level.json to write")
    p.add_argument("--thumbnail", help="PNG thumbnail to write")
    p.add_argument(
        "--mask",
        help="PNG mask to write (same size as the thumbnail): 255 tissue, 128 ink, 0 glass; "
        "`wsiproc infer --mask` gates windows with it",
    )
    p.add_argument(
        "--on-read-error",
        choices=("fail", "skip"),
        default="fail",
        help="fail: an undecodable thumbnail is an error; skip: write a grey thumbnail and an "
        "all-tissue mask marked 'tissue unknown' (with the reason), so infer processes every "
        "window with tissue NaN",
    )
    add_level_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..atomic import atomic_path, atomic_write
    from ..errors import SlideReadError
    from ..ink import ink_mask
    from ..level import select_level
    from ..maskfile import write_mask, write_unknown_mask
    from ..slide import Slide
    from ..tissue import THUMBNAIL_PX, tissue_mask

    spec = level_spec(args)
    unknown = None
    with Slide(args.slide) as slide:
        info = slide.info
        plan = select_level(info, spec)
        try:
            thumb = slide.thumbnail_rgb(THUMBNAIL_PX)
        except SlideReadError as exc:
            if args.on_read_error != "skip":
                raise
            unknown = exc.problem
            thumb = placeholder_thumbnail(info.l0_bounds.width, info.l0_bounds.height)
    record = {**info.to_dict(), "spec": spec.request(), **plan.to_dict()}
    record["thumbnail"] = str(Path(args.thumbnail).resolve()) if args.thumbnail else None
    record["mask"] = str(Path(args.mask).resolve()) if args.mask else None
    # The thumbnail covers the slide's bounds (the whole slide without): see Slide.thumbnail_rgb.
    record["thumbnail_scale"] = info.l0_bounds.width / thumb.shape[1]
    record["thumbnail_scale_y"] = info.l0_bounds.height / thumb.shape[0]
    record["tissue_unknown"] = unknown is not None
    record["tissue_unknown_reason"] = unknown
    if unknown is None:
        ink = ink_mask(thumb)
        mask = tissue_mask(thumb, ink)
        record["tissue_percent"] = round(100.0 * float(mask.mean()), 3)
        record["ink_percent"] = round(100.0 * float(ink.mean()), 3)
    else:
        print(f"wsiproc level: warning: {args.slide}: tissue unknown ({unknown})", file=sys.stderr)
        record["tissue_percent"] = record["ink_percent"] = None
    if args.thumbnail:
        with atomic_path(args.thumbnail) as tmp:
            Image.fromarray(thumb).save(tmp, format="PNG")
    if args.mask:
        if unknown is None:
            write_mask(args.mask, mask, ink)
        else:
            write_unknown_mask(args.mask, thumb.shape[:2], unknown)
    with atomic_write(args.out) as fh:
        json.dump(record, fh, indent=1)
    return 0


def placeholder_thumbnail(l0_width: int, l0_height: int) -> np.ndarray:
    """Plain grey RGB of the thumbnail's shape, for a slide whose thumbnail cannot be decoded.

    Examples
    --------
    >>> placeholder_thumbnail(3000, 1500).shape
    (512, 1024, 3)
    """
    import numpy as np

    from ..tissue import THUMBNAIL_PX

    side = max(l0_width, l0_height, 1)
    shape = (
        max(1, round(l0_height * THUMBNAIL_PX / side)),
        max(1, round(l0_width * THUMBNAIL_PX / side)),
        3,
    )
    return np.full(shape, PLACEHOLDER_GREY, dtype=np.uint8)
