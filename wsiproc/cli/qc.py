"""``wsiproc qc``: metrics, flags and a self-contained HTML page for one slide."""

from __future__ import annotations

import argparse
import math

from ..errors import ConfigError
from ..qc import metrics
from ..qc.collect import Thresholds, build_qc, write_qc_json
from ..qc.render import write_qc_html


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``qc`` subcommand."""
    p = subparsers.add_parser(
        "qc",
        help="QC metrics, flags and HTML page of one slide",
        description="Measure tissue, focus, marker ink, outputs and runtime of one slide; "
        "write qc.json and a self-contained qc.html.",
    )
    p.add_argument("slide", metavar="SLIDE", help="slide path (recorded in qc.json)")
    p.add_argument("--level-json", required=True, help="level.json of `wsiproc level`")
    p.add_argument("--windows", required=True, help="windows.csv of `wsiproc infer`")
    p.add_argument("--meta", help="windows.json (default: the windows CSV with suffix .json)")
    p.add_argument("--thumbnail", help="thumbnail PNG (default: `thumbnail` of level.json)")
    p.add_argument("--mask", help="tissue mask PNG (default: `mask` of level.json)")
    p.add_argument("--benchmark", help="Snakemake benchmark TSV of the infer job")
    p.add_argument("--features-json", help="features.json of `wsiproc features` (shown)")
    p.add_argument("--slide-json", help="slide.json of `wsiproc slide-predict` (shown)")
    p.add_argument("--out", required=True, help="qc.json to write")
    p.add_argument("--html", required=True, help="qc.html to write")
    p.add_argument(
        "--blur-threshold",
        type=float,
        default=metrics.BLUR_THRESHOLD,
        help="flag `blurry` below this Laplacian variance (grey levels², default %(default)s)",
    )
    p.add_argument(
        "--pen-threshold",
        type=float,
        default=metrics.PEN_THRESHOLD,
        help="flag `pen_marks` above this ink fraction of the thumbnail (default %(default)s)",
    )
    p.add_argument(
        "--min-tissue-percent",
        type=float,
        default=metrics.MIN_TISSUE_PERCENT,
        help="flag `no_tissue` below this tissue %% of the thumbnail (default %(default)s)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write ``qc.json`` and ``qc.html``; return 0."""
    for key in ("blur_threshold", "pen_threshold", "min_tissue_percent"):
        value = getattr(args, key)
        if not math.isfinite(value) or value < 0:
            problem = f"must be a finite number >= 0, got {value}"
            raise ConfigError("--" + key.replace("_", "-"), problem)
    qc = build_qc(
        args.slide,
        level_json=args.level_json,
        windows=args.windows,
        meta=args.meta,
        thumbnail=args.thumbnail,
        mask=args.mask,
        benchmark=args.benchmark,
        html_path=args.html,
        features_json=args.features_json,
        slide_json=args.slide_json,
        thresholds=Thresholds(
            blur_threshold=args.blur_threshold,
            pen_threshold=args.pen_threshold,
            min_tissue_percent=args.min_tissue_percent,
        ),
    )
    write_qc_html(qc, args.html)
    write_qc_json(qc, args.out)
    return 0
