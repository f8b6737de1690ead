"""The viewer in a real browser: headless Debian chromium over the DevTools protocol, a real
``wsiproc view`` process, and a generated slide whose heatmap is known (``viewer_run.KNOWN``).

Pixels are checked against the heatmap stage's own ``heatmap_rgb.tif`` (the colour of each
window, made independently of the viewer) and against the slide's designed colours. Without
chromium these tests fail, as CI must never pass them unseen; set WSIPROC_ALLOW_NO_BROWSER=1
to skip them on a machine without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import tifffile
from chromium import Chromium, browser_or_fail
from viewer_run import GLASS_RGB, KNOWN_GRID, known_cell_rgb

WIDTH, HEIGHT = 1200, 800
INSETS = ((0.07, 0.07), (0.93, 0.07), (0.5, 0.5), (0.07, 0.93), (0.93, 0.93))
"""Where in each window the screenshot is sampled (fractions of its 64-pixel box, about 56
screen pixels wide): 4 screen pixels inside its corners, clear of the outline on its border
and of the blend between neighbouring cells, so a shift of 5 slide pixels fails the test."""


JPEG_TOLERANCE = 12
"""Most a slide pixel next to a colour edge differs from its designed colour (JPEG ringing of
the slide file and of the tile); window colours come from PNG tiles and must match within 2."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    """One headless chromium for the module; fails (does not skip) without chromium."""
    chrome = browser_or_fail(width=WIDTH, height=HEIGHT)
    yield chrome
    chrome.close()


@pytest.fixture
def known_page(browser: Chromium, viewer_server) -> Chromium:
    """The slide page of KNOWN, loaded and idle, whole slide in view, opacity 100 %."""
    browser.navigate(viewer_server.url + "slide/KNOWN")
    wait_idle(browser)
    set_opacity(browser, "End")
    return browser


def wait_idle(browser: Chromium) -> None:
    """Wait until every tile of both layers is drawn and nothing moves."""
    browser.wait_for("window.wsiproc && wsiproc.isIdle()", timeout_s=90, settle_s=0.3)


def set_opacity(browser: Chromium, *keys: str) -> None:
    """Move the opacity slider with the keyboard (End: 100 %, Home: 0 %, PageDown: −10 %)."""
    browser.evaluate("document.getElementById('opacity').focus()")
    codes = {"End": 35, "Home": 36, "PageDown": 34, "PageUp": 33}
    for key in keys:
        for kind in ("keyDown", "keyUp"):
            browser.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=codes[key],
            )
    wait_idle(browser)


def known_windows(viewer_run) -> pd.DataFrame:
    """KNOWN's windows.csv."""
    return pd.read_csv(viewer_run.results / "P1" / "KNOWN" / "windows.csv")


def sample_points(browser: Chromium, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Page coordinates (n boxes, len(INSETS), 2) of the sample points inside each level-0 box;
    NaN for points hidden by the navigator or scale bar."""
    points = [[x + fx * w, y + fy * h] for x, y, w, h in boxes for fx, fy in INSETS]
    page = browser.evaluate(
        f"""(() => {{
        const covers = ['.navigator', '#scalebar'].map(s => document.querySelector(s))
            .filter(e => e).map(e => e.getBoundingClientRect());
        const view = document.getElementById('viewer').getBoundingClientRect();
        return {json.dumps(points)}.map(([x, y]) => {{
            const [px, py] = wsiproc.pageFromImage(x, y);
            const hidden = covers.some(r => px >= r.left - 2 && px <= r.right + 2 &&
                py >= r.top - 2 && py <= r.bottom + 2);
            const inside = px > view.left + 1 && px < view.right - 1 &&
                py > view.top + 1 && py < view.bottom - 1;
            return hidden || !inside ? [null, null] : [px, py];
        }});
    }})()"""
    )
    coords = np.array([[np.nan if v is None else v for v in p] for p in page], dtype=float)
    return coords.reshape(len(boxes), len(INSETS), 2)


def pixels_at(shot: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """RGB of the screenshot at page coordinates (nearest pixel); NaN points give -1."""
    out = np.full((*coords.shape[:-1], 3), -1, dtype=np.int64)
    ok = np.isfinite(coords[..., 0])
    cols = np.floor(coords[..., 0][ok]).astype(int)
    rows = np.floor(coords[..., 1][ok]).astype(int)
    out[ok] = shot[rows, cols]
    return out


def heatmap_rgb_colours(viewer_run, table: pd.DataFrame) -> np.ndarray:
    """Each window's RGB in the heatmap stage's own ``heatmap_rgb.tif`` (pixel = window)."""
    rgba = tifffile.imread(viewer_run.results / "P1" / "KNOWN" / "heatmap_rgb.tif")
    colours = rgba[table["row"].to_numpy(), table["col"].to_numpy()]
    assert (colours[:, 3] == 255).all()
    return colours[:, :3].astype(np.int64)


def boxes_of(table: pd.DataFrame) -> list[tuple[float, float, float, float]]:
    """Level-0 boxes of the CSV's windows."""
    return [tuple(map(float, b)) for b in table[["x", "y", "width", "height"]].to_numpy()]


def test_slide_page_loads_offline_and_draws_both_layers(
    browser: Chromium, viewer_server, viewer_run
) -> None:
    browser.navigate(viewer_server.url + "slide/KNOWN")
    wait_idle(browser)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(viewer_server.url))
    urls = browser.requests()
    # Offline: every request went to the viewer itself (no CDN, no font or script elsewhere).
    assert urls and all(u.startswith(origin + "/") or u.startswith("data:") for u in urls), urls
    assert any("/static/openseadragon/openseadragon.min.js" in u for u in urls)
    slide_tiles = [u for u in urls if "/slide/KNOWN/slide_files/" in u]
    heat_tiles = [u for u in urls if "/slide/KNOWN/heatmap/mean_r/viridis_files/" in u]
    assert slide_tiles and heat_tiles
    statuses = {
        e["params"]["response"]["url"]: e["params"]["response"]["status"]
        for e in browser.events
        if e.get("method") == "Network.responseReceived"
    }
    assert all(statuses.get(u) == 200 for u in slide_tiles + heat_tiles)
    # Tiles are drawn: the screenshot shows the glass colour and many overlay colours.
    shot = browser.screenshot()
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50

    # Zoomed to full resolution, the last Deep Zoom level's tiles are requested and drawn.
    levels = browser.evaluate("wsiproc.viewer.world.getItemAt(0).source.maxLevel")
    browser.evaluate(
        "(() => { const v = wsiproc.viewer, item = v.world.getItemAt(0);"
        " v.viewport.zoomTo(item.imageToViewportZoom(1.0), null, true);"
        " v.viewport.panTo(item.imageToViewportCoordinates(500, 400), true); })()"
    )
    wait_idle(browser)
    assert any(f"/slide_files/{levels}/" in u for u in browser.requests())

    # Scale bar: its length in µm over its width in pixels is the slide's µm per screen pixel.
    x0 = browser.evaluate("wsiproc.pageFromImage(0, 0)[0]")
    x1 = browser.evaluate("wsiproc.pageFromImage(1000, 0)[0]")
    um_per_px = 1000 * 0.5 / (x1 - x0)
    bar = browser.evaluate("({...document.getElementById('scalebar').dataset})")
    assert float(bar["um"]) / float(bar["px"]) == pytest.approx(um_per_px, rel=1e-3)
    label = browser.evaluate("document.getElementById('scalebar-label').textContent")
    assert label == f"{float(bar['um']):g} µm"


def test_overlay_colours_sit_on_the_csv_windows(known_page: Chromium, viewer_run) -> None:
    """Issue 10's pixel test: every window's colour (heatmap_rgb.tif) at every sample point
    inside its box, and the slide's glass where the CSV has no window."""
    table = known_windows(viewer_run)
    # The known heatmap: mean_r is the red of the cell, which grows with the column.
    assert (table["mean_r"] == 100 + 9 * table["col"]).all()
    shot = known_page.screenshot()
    got = pixels_at(shot, sample_points(known_page, boxes_of(table)))
    want = heatmap_rgb_colours(viewer_run, table)[:, None, :]
    seen = got[..., 0] >= 0
    assert seen.all(axis=1).sum() >= 100, "most windows must be fully in view"
    diff = np.abs(got - want).max(axis=2)
    assert (diff[seen] <= 2).all(), np.argwhere(seen & (diff > 2))[:10]

    rows, cols = KNOWN_GRID
    glass = [
        (c * 64.0, r * 64.0, 64.0, 64.0)
        for r in range(rows)
        for c in range(cols)
        if known_cell_rgb(r, c) is None
    ]
    got_glass = pixels_at(shot, sample_points(known_page, glass))
    visible = got_glass[..., 0] >= 0
    assert visible.sum() >= 40
    # Glass shows through (the slide's JPEG rings a little beside tissue; every colour of
    # the map is far from grey 242, so an overlay there would miss by far more).
    assert (np.abs(got_glass[visible] - np.array(GLASS_RGB)) <= JPEG_TOLERANCE).all()


def test_output_choice_recolours_by_that_output(known_page: Chromium, viewer_run) -> None:
    """Choosing mean_g colours the windows by row (mean_g grows with the row)."""
    known_page.evaluate(
        "(() => { const s = document.getElementById('output'); s.value = 'mean_g';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    wait_idle(known_page)
    table = known_windows(viewer_run)
    vmin, vmax = known_page.evaluate("wsiproc.settings.heatmap.ranges.mean_g")
    from wsiproc.colormap import colorize, lookup_table

    values = table["mean_g"].to_numpy(dtype=np.float64)[None, :]
    want = colorize(values, lookup_table("viridis"), vmin, vmax)[0, :, :3].astype(np.int64)
    got = pixels_at(known_page.screenshot(), sample_points(known_page, boxes_of(table)))
    seen = got[..., 0] >= 0
    diff = np.abs(got - want[:, None, :]).max(axis=2)
    assert seen.all(axis=1).sum() >= 100
    assert (diff[seen] <= 2).all()
    legend = known_page.evaluate("document.getElementById('legend-max').textContent")
    assert float(legend) == pytest.approx(vmax, rel=1e-3)


def test_opacity_slider_changes_the_pixels(known_page: Chromium, viewer_run) -> None:
    table = known_windows(viewer_run)
    points = sample_points(known_page, boxes_of(table))
    full = pixels_at(known_page.screenshot(), points)
    seen = full[..., 0] >= 0
    centre = INSETS.index((0.5, 0.5))

    set_opacity(known_page, "Home")
    assert known_page.evaluate("wsiproc.state.opacity") == 0
    clear = pixels_at(known_page.screenshot(), points)
    # At 0 % the slide itself shows: its designed colour in the middle of each window...
    cells = zip(table["row"], table["col"], strict=True)
    slide = np.array([known_cell_rgb(r, c) for r, c in cells])
    middle = clear[:, centre][seen[:, centre]]
    assert (np.abs(middle - slide[seen[:, centre]]).max(axis=1) <= 4).all()
    # ...and nearly every sample point changed from the opaque overlay.
    assert (np.abs(full - clear).max(axis=2)[seen] > 10).mean() > 0.9

    set_opacity(known_page, "End", *["PageDown"] * 5)
    assert known_page.evaluate("wsiproc.state.opacity") == 0.5
    half = pixels_at(known_page.screenshot(), points)
    # At 50 % each pixel is the mean of the slide and the overlay.
    assert (np.abs(half - (full + clear) / 2).max(axis=2)[seen] <= 2).all()


def test_click_on_a_window_shows_its_csv_row(known_page: Chromium, viewer_run) -> None:
    csv_path = viewer_run.results / "P1" / "KNOWN" / "windows.csv"
    header, *lines = csv_path.read_text().splitlines()
    rows = {tuple(line.split(",")[2:4]): line.split(",") for line in lines}
    # Near a corner of each window, so a click read one cell off would pick a neighbour.
    for row, col, dx, dy in ((3, 7, 5, 5), (9, 2, 59, 59), (6, 14, 59, 5), (2, 9, 5, 59)):
        fields = rows[(str(row), str(col))]
        x, y = int(fields[4]) + dx, int(fields[5]) + dy
        known_page.click(*known_page.evaluate(f"wsiproc.pageFromImage({x}, {y})"))
        shown = known_page.wait_for(
            "(() => { const t = document.getElementById('window-table');"
            f" if (!t || !wsiproc.state.selected || wsiproc.state.selected[0] !== {row}"
            f" || wsiproc.state.selected[1] !== {col}) return null;"
            " return [...t.rows].map(r => [r.cells[0].textContent, r.cells[1].textContent]); })()"
        )
        assert [name for name, _ in shown] == header.split(",")
        assert [value for _, value in shown] == fields

    # A glass cell has no CSV row, and the page says so.
    known_page.click(*known_page.evaluate("wsiproc.pageFromImage(5 * 64 + 30, 4 * 64 + 30)"))
    text = known_page.wait_for(
        "(() => { const t = document.getElementById('window-info').textContent;"
        " return t.startsWith('No window') ? t : null; })()"
    )
    assert "row 4, col 5" in text


def test_window_outlines_appear_only_at_high_zoom(known_page: Chromium) -> None:
    def outline_pixels() -> int:
        return known_page.evaluate(
            "(() => { const c = document.getElementById('outlines');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()"
        )

    assert known_page.evaluate("wsiproc.state.windows.length") > 100
    assert outline_pixels() > 1000
    known_page.evaluate("void wsiproc.viewer.viewport.zoomTo(0.15, null, true)")
    wait_idle(known_page)
    assert outline_pixels() == 0


@pytest.mark.parametrize("slide", ["SECOND", "GLASS", "EMPTY"])
def test_every_slide_page_of_the_run_loads(browser: Chromium, viewer_server, slide: str) -> None:
    """Flagged and failed slides too: a slide without windows shows the slide alone, a slide
    that never opened says why; no request fails."""
    browser.navigate(viewer_server.url + f"slide/{slide}")
    wait_idle(browser)
    responses = [
        e["params"]["response"]
        for e in browser.events
        if e.get("method") == "Network.responseReceived"
    ]
    failed = [(r["url"], r["status"]) for r in responses if r["status"] != 200]
    assert not [f for f in failed if not f[0].endswith("/favicon.ico")], failed
    settings = browser.evaluate("wsiproc.settings")
    if slide == "EMPTY":
        assert settings["dzi"] is None
        text = browser.evaluate("document.body.textContent")
        assert "file is empty (0 bytes)" in text and "cannot be shown" in text
    else:
        assert any("/slide_files/" in r["url"] for r in responses)
        assert settings["mpp"] == pytest.approx(0.5)


HOME_GEOMETRY = """(() => {
    const rect = id => {
        const r = document.getElementById(id).getBoundingClientRect();
        return [r.left, r.top, r.right, r.bottom];
    };
    const size = wsiproc.viewer.world.getItemAt(0).getContentSize();
    return {
        slide: [...wsiproc.pageFromImage(0, 0), ...wsiproc.pageFromImage(size.x, size.y)],
        viewer: rect('viewer'), panel: rect('panel'), window: [innerWidth, innerHeight],
        navigator: getComputedStyle(document.querySelector('.navigator')).visibility,
    };
})()"""


@pytest.mark.parametrize("height", [900, 500])
def test_home_view_fits_the_whole_slide_beside_the_panel(
    browser: Chromium, viewer_server, height: int
) -> None:
    """Issue 17 item 5: at 1200×900 (and at 1200×500, where the height limits the slide) the
    home view shows the whole slide inside the window and left of the side panel, as large as
    the viewer allows, with no navigator over it; zoomed in, the navigator is back."""
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=1200, height=height, deviceScaleFactor=1, mobile=False,
    )  # fmt: skip
    try:
        for slide in ("KNOWN", "SECOND"):
            browser.navigate(viewer_server.url + f"slide/{slide}")
            wait_idle(browser)
            g = browser.evaluate(HOME_GEOMETRY)
            left, top, right, bottom = g["slide"]
            v_left, v_top, v_right, v_bottom = g["viewer"]
            assert g["window"] == [1200, height]
            assert v_bottom <= height and v_right <= g["panel"][0]  # the viewer fits the window
            assert right < g["panel"][0], (slide, g)
            assert left > v_left and top > v_top and right < v_right and bottom < v_bottom, g
            # As large as fits: one side spans the viewer but for the margins (8 px each).
            fill = max((right - left) / (v_right - v_left), (bottom - top) / (v_bottom - v_top))
            assert fill == pytest.approx(1.0, abs=20 / min(v_right - v_left, v_bottom - v_top))
            assert g["navigator"] == "hidden"
        browser.evaluate("void wsiproc.viewer.viewport.zoomBy(4, null, true)")
        wait_idle(browser)
        assert browser.evaluate(HOME_GEOMETRY)["navigator"] == "visible"
    finally:
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
