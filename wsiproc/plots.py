"""Every chart of the QC pages, one function each, drawn by matplotlib as SVG for the page.

Apart from :mod:`wsiproc.qc` because drawing is a different job from measuring: these functions
take values and return a finished figure. matplotlib is imported inside them, never at module
import, so the stages that do not plot (``wsiproc infer`` above all) never load it. Figures are
made with ``matplotlib.figure.Figure`` directly (no pyplot, no GUI backend, no global figure
state), and saved as SVG with text as text, so they stay crisp at any zoom and small.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .colormap import DEFAULT_COLORMAP, lookup_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BAR_COLOUR = "#31688e"
"""Bars and boxes: viridis at 0.35, the blue of the old hand-drawn histograms."""

STYLE = {
    "font.size": 8.0,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "wsiproc",
}
"""Small text for figures a few hundred pixels wide; ``svg.hashsalt`` keeps SVG ids (and so
the page's bytes) the same from run to run."""


def _new_figure(width_in: float, height_in: float) -> Figure:
    """An empty figure of the given size (inches at 100 dpi), outside pyplot's state: no GUI
    backend is ever loaded, nor the caller's backend changed (rasters would be drawn by Agg)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def svg_data_uri(figure: Figure) -> str:
    """A figure as a ``data:image/svg+xml;base64,`` URI for an ``<img>`` (its text and ids stay
    inside the image, so several figures never clash on one page)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_figure(values: np.ndarray, *, name: str, bins: int = 32) -> Figure:
    """Histogram of one output's finite window values (:func:`wsiproc.qc.metrics.histogram`),
    windows on the y axis, the output's value on the x axis."""
    import matplotlib

    from .qc.metrics import histogram  # here: wsiproc.qc imports this module

    counts, edges = histogram(values, bins=bins)
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(3.6, 1.9)
        axes = figure.add_subplot()
        axes.stairs(counts, edges, fill=True, color=BAR_COLOUR)
        axes.set_xlim(edges[0], edges[-1])
        axes.set_xlabel(name)
        axes.set_ylabel("windows")
    return figure


def colorbar_figure(
    vmin: float, vmax: float, *, label: str, colormap: str = DEFAULT_COLORMAP
) -> Figure:
    """A horizontal colour bar from ``vmin`` to ``vmax`` with ticks: the legend of the QC
    page's heatmap overlay, drawn from the same 256-entry table as the overlay."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    table = ListedColormap(lookup_table(colormap) / 255.0, name=colormap)
    low, high = (vmin, vmax) if vmax > vmin else (vmin - 0.5, vmin + 0.5)
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(4.8, 0.75)
        axes = figure.add_subplot()
        mappable = ScalarMappable(norm=Normalize(low, high), cmap=table)
        bar = figure.colorbar(mappable, cax=axes, orientation="horizontal")
        bar.set_label(label)
    return figure


def distributions_figure(values: Mapping[str, np.ndarray]) -> Figure:
    """One slide's output distributions side by side: per output a violin of its finite window
    values with a box (quartiles, whiskers at the 5th and 95th percentiles, median line), on
    one value axis so outputs of one model can be compared; an output without finite values
    keeps its place, empty."""
    import matplotlib

    names = list(values)
    finite = [np.asarray(v, dtype=np.float64).ravel() for v in values.values()]
    finite = [v[np.isfinite(v)] for v in finite]
    drawn = [i for i, v in enumerate(finite) if v.size]
    spread = [i for i in drawn if np.ptp(finite[i]) > 0]
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(max(2.4, 1.2 + 0.75 * len(names)), 2.6)
        axes = figure.add_subplot()
        if spread:
            violins = axes.violinplot(
                [finite[i] for i in spread],
                positions=[i + 1 for i in spread],
                showextrema=False,
                widths=0.8,
            )
            for body in violins["bodies"]:
                body.set(facecolor=BAR_COLOUR, alpha=0.3, edgecolor="none")
        if drawn:
            axes.boxplot(
                [finite[i] for i in drawn],
                positions=[i + 1 for i in drawn],
                whis=(5, 95),
                showfliers=False,
                widths=0.22,
                patch_artist=True,
                boxprops={"facecolor": BAR_COLOUR, "edgecolor": "#222222"},
                medianprops={"color": "#fde725", "linewidth": 1.5},
            )
        axes.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 4 else 0)
        axes.set_xlim(0.4, len(names) + 0.6)
        axes.set_ylabel("value per window")
    return figure
