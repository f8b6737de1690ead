"""Command-line options shared by several stages (level choice, the stream's knobs)."""

from __future__ import annotations

import argparse
import os

from ..level import LevelSpec


def add_level_options(parser: argparse.ArgumentParser) -> None:
    """``--level | --mpp | --magnification | --level-function`` plus mpp corrections."""
    group = parser.add_argument_group("resolution (pick one; default --level 0)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--level", type=int, help="read this pyramid level as is")
    choice.add_argument("--mpp", type=float, help="target µm per pixel (e.g. 0.5)")
    choice.add_argument("--magnification", type=float, help="target magnification (e.g. 20)")
    choice.add_argument(
        "--level-function",
        metavar="MOD:FUNC",
        help="user function taking the slide metadata dict and returning a level index",
    )
    group.add_argument(
        "--slide-mpp", type=float, help="level-0 µm/px to use instead of the slide's metadata"
    )
    group.add_argument(
        "--fallback-mpp", type=float, help="level-0 µm/px when the slide records none"
    )
    group.add_argument(
        "--allow-upsampling",
        action="store_true",
        help="accept a target finer than level 0 (windows enlarged from the scan)",
    )


def level_spec(args: argparse.Namespace) -> LevelSpec:
    """The :class:`LevelSpec` the options describe."""
    return LevelSpec(
        level=args.level,
        mpp=args.mpp,
        magnification=args.magnification,
        function=args.level_function,
        slide_mpp=args.slide_mpp,
        fallback_mpp=args.fallback_mpp,
        allow_upsampling=args.allow_upsampling,
    )


def default_workers() -> int:
    """Loader processes by default: the usable cores, 1 to 4."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, min(4, cores))


def add_stream_options(parser: argparse.ArgumentParser, unit: str) -> None:
    """What ``infer`` and ``features`` share: the gating mask, the level choice, and how the
    stream runs (loaders, batch, device); ``unit`` names what is batched (windows, patches)."""
    parser.add_argument(
        "--mask",
        metavar="MASK_PNG",
        help="tissue/ink mask written by `wsiproc level --mask` (default: detect it here)",
    )
    add_level_options(parser)
    parser.add_argument("--workers", type=int, default=default_workers(), help="loader processes")
    parser.add_argument("--batch-size", type=int, default=32, help=f"{unit} per model batch")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run a torch.export (.pt2) model AOT-compiled by inductor for --batch-size; the "
        "first slide builds it (minutes on a CPU), later ones load it from --compile-cache",
    )
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="where compiled models are kept (default: $WSIPROC_CACHE_DIR/compiled, else "
        "~/.cache/wsiproc/compiled)",
    )


def compile_cache(args: argparse.Namespace) -> str | None:
    """The compile cache directory when ``--compile`` is given, else None (eager)."""
    if not args.compile:
        return None
    from ..compiled import default_cache_dir

    return args.compile_cache or str(default_cache_dir())
