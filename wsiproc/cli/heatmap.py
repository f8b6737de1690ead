"""``wsiproc heatmap``: windows CSV → float heatmap TIFF, colour TIFF, optional GeoJSON.

One pass over the CSV fills the raster and streams the GeoJSON; both TIFFs are written after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..colormap import COLORMAP_HELP, DEFAULT_COLORMAP, colorize, lookup_table, value_range
from ..errors import ConfigError
from ..geojson import FeatureWriter
from ..heatmap import (
    COLOR_SCALES,
    MODES,
    WindowGrid,
    average_windows,
    centre_on_windows,
    centring,
    percentile_rank,
    pixel_size_um,
    window_span,
    write_tiff,
)
from ..record import read_record
from ..table import iter_window_chunks

log = logging.getLogger(__name__)

THUMBNAIL_PX = 256
"""Longer side of ``--thumbnail-out``'s PNG: a few kB that the cohort report loads lazily."""

RANGE_MIN_TISSUE = 0.5
"""Tissue fraction from which a window's value counts for the colour range (all windows count
when none reaches it)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``heatmap`` subcommand."""
    p = subparsers.add_parser(
        "heatmap",
        help="windows CSV to pyramidal heatmap TIFFs and GeoJSON",
        description=(
            "Assemble the per-window outputs of a windows CSV into a float32 TIFF (one band "
            "per output, one pixel per stride cell), an RGBA TIFF of one output that OpenSlide "
            "opens, and optionally a QuPath GeoJSON of the windows."
        ),
    )
    p.add_argument("csv", metavar="CSV", help="windows.csv written by 'wsiproc infer'")
    p.add_argument("--out", required=True, help="float32 heatmap TIFF to write")
    p.add_argument("--rgb-out", required=True, help="colour-mapped RGBA TIFF to write")
    p.add_argument("--geojson", help="also write the windows as QuPath GeoJSON here")
    p.add_argument(
        "--thumbnail-out",
        help=f"also write the colour heatmap as a PNG of {THUMBNAIL_PX} px on its longer side "
        "(the cohort report links it)",
    )
    p.add_argument("--meta", help="windows.json of the CSV (default: CSV path with .json)")
    p.add_argument("--output", help="output drawn in the RGB TIFF (default: the first)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="window",
        help="window: one pixel per window; average: mean of overlapping windows per stride "
        "cell (vector outputs only)",
    )
    p.add_argument(
        "--colormap",
        default=DEFAULT_COLORMAP,
        help=f"colours of the RGB TIFF: any matplotlib colormap name (default: "
        f"{DEFAULT_COLORMAP}; list them with {COLORMAP_HELP})",
    )
    p.add_argument(
        "--color-scale",
        choices=COLOR_SCALES,
        default="value",
        help="value: colours follow the values; rank: their per-slide percentile rank, "
        "--vmin/--vmax then in [0, 1] (attention maps, as CLAM); the float TIFF keeps values",
    )
    p.add_argument(
        "--vmin", type=float, help="value of the lowest colour (default: 1st percentile)"
    )
    p.add_argument(
        "--vmax", type=float, help="value of the highest colour (default: 99th percentile)"
    )
    p.set_defaults(run=run)


def write_thumbnail(rgba: np.ndarray, path: str | Path) -> None:
    """The colour heatmap as a PNG of :data:`THUMBNAIL_PX` px on its longer side, atomically:
    nearest-neighbour, so each window stays one flat colour, also when a small grid (one
    pixel per window) is enlarged; flat colours keep the file at a few kB."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
    scale = THUMBNAIL_PX / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    with atomic_path(path) as tmp:
        image.resize(size, Image.Resampling.NEAREST).save(tmp, format="PNG")


def run(args: argparse.Namespace) -> int:
    """Build the heatmaps; raise WsiprocError subclasses on bad input or failed writes."""
    csv_path = Path(args.csv)
    meta = read_record(args.meta if args.meta else csv_path.with_suffix(".json"))
    name = args.output if args.output is not None else meta.output_names[0]
    if name not in meta.output_names:
        available = ", ".join(meta.output_names)
        raise ConfigError("--output", f"unknown output {name!r}; available: {available}")
    lut = lookup_table(args.colormap)
    if args.vmin is not None and args.vmax is not None and args.vmin >= args.vmax:
        raise ConfigError("--vmin", f"must be below --vmax ({args.vmin} >= {args.vmax})")
    if args.mode == "average" and meta.is_spatial:
        problem = f"average needs vector outputs; {meta.path} has shape {list(meta.output_shape)}"
        raise ConfigError("--mode", problem)

    grid = WindowGrid(meta, source=str(csv_path))
    # Windows mostly of tissue set the colour range: a few windows over ink, debris or glass
    # edges must not stretch the scale until the tissue is one flat colour.
    tissue_cells = np.zeros((meta.grid_rows, meta.grid_cols), dtype=bool)
    with contextlib.ExitStack() as stack:
        writer = None
        if args.geojson:
            writer = FeatureWriter(args.geojson, names=meta.outputs, l0_origin=meta.l0_origin)
            stack.enter_context(writer)
        for chunk in iter_window_chunks(csv_path, meta, with_geometry=True):
            grid.add(chunk)
            tissue_cells[chunk.rows, chunk.cols] = chunk.tissue >= RANGE_MIN_TISSUE
            if writer is not None:
                writer.write(chunk.rows, chunk.cols, chunk.boxes, chunk.tissue, chunk.values)

    raster = grid.values
    factor, shift = 1, 0
    if args.mode == "average" and raster.size:
        raster = average_windows(raster, window_span(meta.kernel_size, meta.stride))
    elif not meta.is_spatial and raster.size:
        # Overlapping windows: each value on the stride cell at its window's centre, so the
        # overlay is not shifted by (kernel - stride) / 2 towards the top left.
        factor, shift = centring(meta.kernel_size, meta.stride)
        raster = centre_on_windows(raster, factor, shift)
    if not raster.shape[0] or not raster.shape[1]:
        # No window (slide smaller than one window): one transparent pixel, so every later
        # stage and every viewer still opens the TIFFs.
        raster = np.full((1, 1, raster.shape[2]), np.nan, dtype=np.float32)
    pixel_um = pixel_size_um(meta)
    if pixel_um is not None:
        pixel_um = (pixel_um[0] / factor, pixel_um[1] / factor)
    if pixel_um is None:
        log.warning("%s: proc_mpp is null; TIFFs get ResolutionUnit NONE", meta.path)

    index = meta.output_names.index(name)
    band = raster[..., index]
    window_band = grid.values[..., index]
    if tissue_cells.any():
        h, w = meta.block_shape
        window_band = window_band[np.kron(tissue_cells, np.ones((h, w), dtype=bool))]
    if args.color_scale == "rank":
        band = percentile_rank(band, window_band)
        vmin = 0.0 if args.vmin is None else args.vmin  # ranks span [0, 1]
        vmax = 1.0 if args.vmax is None else args.vmax
    else:
        vmin, vmax = value_range(window_band, vmin=args.vmin, vmax=args.vmax)
    common = {"wsiproc": __version__, "mode": args.mode, "pixel_size_um": pixel_um}
    common["window_pixels"] = {"factor": factor, "shift": shift}
    value_desc = {**common, "bands": list(meta.output_names), "stride": meta.stride}
    write_tiff(args.out, raster, pixel_um=pixel_um, description=json.dumps(value_desc))
    rgb_desc = {**common, "output": name, "vmin": vmin, "vmax": vmax, "colormap": args.colormap}
    rgb_desc["color_scale"] = args.color_scale
    rgba = colorize(band, lut, vmin, vmax)
    write_tiff(args.rgb_out, rgba, pixel_um=pixel_um, description=json.dumps(rgb_desc))
    if args.thumbnail_out:
        write_thumbnail(rgba, args.thumbnail_out)
    rows, cols = raster.shape[:2]
    print(
        f"heatmap: {grid.window_count} windows -> {rows}x{cols} px, {raster.shape[2]} band(s), "
        f"mode {args.mode}; {name!r} in {args.colormap} over [{vmin:.6g}, {vmax:.6g}]"
    )
    return 0
