"""The charts of the QC page (:mod:`wsiproc.plots`), read back from the figures matplotlib made,
and the promise that stages which do not plot never import matplotlib (issue 18)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from test_qc import make_slide_inputs, run_qc

from wsiproc import plots
from wsiproc.colormap import lookup_table
from wsiproc.qc import metrics


def imported(code: str) -> list[str]:
    """Which of matplotlib and jinja2 a fresh interpreter has loaded after running ``code``."""
    check = "; import sys; print(*[m for m in ('matplotlib', 'jinja2') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_infer_never_imports_matplotlib() -> None:
    """``wsiproc infer`` never pays for matplotlib (nor Jinja2): the CLI imports only its
    stage's module, and no module of the package loads matplotlib at import."""
    assert imported("from wsiproc.cli import build_parser; build_parser('infer')") == []
    assert imported("import wsiproc.cli.infer, wsiproc.stream.engine") == []
    everything = "from wsiproc.cli import build_parser; build_parser(); import wsiproc.plots"
    assert "matplotlib" not in imported(everything)


def test_distributions_figure_has_one_box_per_output_at_its_median_and_percentiles() -> None:
    rng = np.random.default_rng(4)
    values = {
        "tumor": rng.random(500),
        "stroma": np.append(rng.normal(3.0, 1.0, 300), [np.nan, np.inf]),
        "empty": np.array([np.nan, np.nan]),
        "flat": np.full(20, 0.5),
    }
    figure = plots.distributions_figure(values)
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_xticklabels()] == list(values)
    medians = [line for line in axes.lines if line.get_color() == "#fde725"]
    finite = {n: v[np.isfinite(v)] for n, v in values.items() if np.isfinite(v).any()}
    assert len(medians) == len(finite) == 3
    for line, (name, v) in zip(medians, finite.items(), strict=True):
        assert line.get_ydata()[0] == pytest.approx(np.median(v)), name
        assert np.mean(line.get_xdata()) == pytest.approx(list(values).index(name) + 1)
    caps = sorted(round(float(line.get_ydata()[0]), 9) for line in axes.lines[:-3])
    for v in finite.values():  # whiskers end at the last window inside the 5th–95th percentile
        low, high = np.percentile(v, [5, 95])
        inside = v[(v >= low) & (v <= high)]
        assert round(float(inside.min()), 9) in caps and round(float(inside.max()), 9) in caps
    assert len(axes.collections) == 2  # violins only for outputs that vary: tumor, stroma


def test_histogram_figure_draws_the_metrics_histogram() -> None:
    values = np.append(np.random.default_rng(1).normal(size=400), [np.nan, -np.inf])
    figure = plots.histogram_figure(values, name="hematoxylin")
    (axes,) = figure.axes
    (steps,) = axes.patches
    counts, edges = metrics.histogram(values)
    drawn = steps.get_data()
    np.testing.assert_array_equal(drawn.values, counts)
    np.testing.assert_array_equal(drawn.edges, edges)
    assert axes.get_xlabel() == "hematoxylin"


def test_colorbar_figure_uses_the_heatmaps_table_over_the_range() -> None:
    figure = plots.colorbar_figure(0.04, 0.25, label="h (mean per window)", colormap="magma")
    (axes,) = figure.axes
    assert axes.get_xlim() == pytest.approx((0.04, 0.25))
    assert axes.get_xlabel() == "h (mean per window)"
    (mesh,) = [c for c in axes.collections if isinstance(c, QuadMesh)]  # the bar's colours
    colours = np.rint(mesh.cmap(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(colours, lookup_table("magma"))


def test_svg_of_a_figure_is_the_same_from_run_to_run() -> None:
    first = plots.svg_data_uri(plots.histogram_figure(np.arange(50.0), name="a"))
    again = plots.svg_data_uri(plots.histogram_figure(np.arange(50.0), name="a"))
    assert first == again and first.startswith("data:image/svg+xml;base64,")


def test_qc_page_embeds_the_distributions_figure_of_its_outputs(tmp_path: Path) -> None:
    inputs = make_slide_inputs(tmp_path, "S1")
    code, out = run_qc(inputs)
    assert code == 0
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    found = re.search(
        r'<img class="chart" src="data:image/svg\+xml;base64,([^"]+)" '
        r'alt="Output distributions over the slide&#39;s windows">',
        page,
    )
    assert found is not None
    svg = base64.b64decode(found.group(1)).decode("utf-8")
    assert svg.startswith("<?xml") and "<svg" in svg
    assert ">prob_tumor<" in svg and ">score<" in svg  # text stays text (svg.fonttype none)
