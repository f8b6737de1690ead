"""``wsiproc view RESULTS_DIR``: pan and zoom every slide of a run with its heatmap, in a browser.

Serves the workflow's results folder on this machine only (127.0.0.1) unless told otherwise;
the server itself lives in :mod:`wsiproc.viewer`, this module only parses arguments and says
where to point the browser.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_CACHE_MB = 256.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``view`` subcommand."""
    p = subparsers.add_parser(
        "view",
        help="serve a run's slides and heatmaps to a browser (pan and zoom)",
        description="Serve the results of a workflow run: an index of every slide, and per "
        "slide a pan-and-zoom view of the slide with its heatmap, window outlines, each "
        "window's CSV row on click, a scale bar and the QC flags. Tiles are made on demand "
        "from the slide files. Stops on Ctrl-C or SIGTERM.",
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="the workflow's outdir (has summary.tsv)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
        "shows the slides to anyone who can reach this machine)",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=DEFAULT_CACHE_MB,
        help=f"memory for recently served tiles (default {DEFAULT_CACHE_MB:g} MB)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until stopped; return 0."""
    from ..errors import ConfigError
    from ..viewer import Viewer, serve

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"must be 0-65535, not {args.port}")
    if args.cache_mb <= 0:
        raise ConfigError("--cache-mb", f"must be positive, not {args.cache_mb:g}")
    cores = os.cpu_count() or 2
    viewer = Viewer(args.results, cache_mb=args.cache_mb, max_open=8, max_handles=max(2, cores))

    def ready(url: str) -> None:
        count = len(viewer.catalog.entries())
        print(f"wsiproc view: {count} slides of {viewer.results}", flush=True)
        if args.host not in LOOPBACK:
            print(f"wsiproc view: listening on {args.host}: other machines can see the slides")
        print(f"wsiproc view: open {url}  (Ctrl-C to stop)", flush=True)

    try:
        serve(viewer, host=args.host, port=args.port, on_ready=ready)
    finally:
        viewer.close()
    print("wsiproc view: stopped", flush=True)
    return 0
