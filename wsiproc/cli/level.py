"""``wsiproc level SLIDE --out level.json``: choose the level, save thumbnail and tissue mask."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_level_options, level_spec


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
    add_level_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..atomic import atomic_path, atomic_write
    from ..ink import ink_mask
    from ..level import select_level
    from ..maskfile import write_mask
    from ..slide import Slide
    from ..tissue import THUMBNAIL_PX, tissue_mask

    spec = level_spec(args)
    with Slide(args.slide) as slide:
        info = slide.info
        plan = select_level(info, spec)
        thumb = slide.thumbnail_rgb(THUMBNAIL_PX)
    ink = ink_mask(thumb)
    mask = tissue_mask(thumb, ink)
    record = {**info.to_dict(), "spec": spec.request(), **plan.to_dict()}
    record["thumbnail"] = str(Path(args.thumbnail).resolve()) if args.thumbnail else None
    record["mask"] = str(Path(args.mask).resolve()) if args.mask else None
    # The thumbnail covers the slide's bounds (the whole slide without): see Slide.thumbnail_rgb.
    record["thumbnail_scale"] = info.l0_bounds.width / thumb.shape[1]
    record["thumbnail_scale_y"] = info.l0_bounds.height / thumb.shape[0]
    record["tissue_percent"] = round(100.0 * float(mask.mean()), 3)
    record["ink_percent"] = round(100.0 * float(ink.mean()), 3)
    if args.thumbnail:
        with atomic_path(args.thumbnail) as tmp:
            Image.fromarray(thumb).save(tmp, format="PNG")
    if args.mask:
        write_mask(args.mask, mask, ink)
    with atomic_write(args.out) as fh:
        json.dump(record, fh, indent=1)
    return 0
