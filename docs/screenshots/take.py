"""Make the page screenshots in ``docs/screenshots/``: QC page, cohort report, viewer, at 1200×900.

The record of how the pages look (issue 18 asked for one before and after the move to
templates). Run after the demo workflow (``wsiproc demo demo`` then ``snakemake --cores 2
--configfile demo/config.yaml``), from the repository root:

    python docs/screenshots/take.py demo/results docs/screenshots

qc.html and report.html are opened from disk (as a user does), the viewer through a real
``wsiproc view``. A PNG over 300 kB keeps 5 bits a channel, so the record stays small.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from chromium import Chromium, find_chromium  # noqa: E402
from viewer_run import ViewerProcess  # noqa: E402

SLIDE = ("P2", "P2_A")
WIDTH, HEIGHT = 1200, 900


MAX_BYTES = 300_000
"""Largest PNG kept at 8 bits a channel; a larger one (the slide's tissue) keeps 5 bits a
channel, which leaves colour scales smooth where a 256-colour palette made them bands."""


def save(browser: Chromium, path: Path) -> None:
    """The viewport as a PNG, once the page has settled."""
    time.sleep(0.5)
    image = Image.fromarray(browser.screenshot())
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        levels = [round(round(v * 31 / 255) * 255 / 31) for v in range(256)]  # white stays
        image.point(levels * 3).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


def scroll_to(browser: Chromium, heading: str, *, right: bool = False) -> None:
    """Scroll the page to the ``<h2>`` with this text (and to its right edge: the report's
    prediction columns)."""
    browser.evaluate(
        f"[...document.querySelectorAll('h2')].find(h => h.textContent === {heading!r})"
        ".scrollIntoView()"
    )
    if right:
        browser.evaluate("window.scrollTo(document.documentElement.scrollWidth, window.scrollY)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the demo run's results folder")
    parser.add_argument("out", type=Path, help="folder for the PNGs")
    args = parser.parse_args()
    results = args.results.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    browser = Chromium(find_chromium() or "chromium", width=WIDTH, height=HEIGHT)
    server = None
    try:
        browser.navigate(results.joinpath(*SLIDE, "qc.html").as_uri())
        save(browser, args.out / "qc.png")
        browser.evaluate(
            "[...document.querySelectorAll('h2')].find(h => h.textContent === 'Outputs')"
            ".scrollIntoView()"
        )
        save(browser, args.out / "qc-outputs.png")
        scroll_to(browser, "Features")
        save(browser, args.out / "qc-prediction.png")
        browser.navigate((results / "report.html").as_uri())
        save(browser, args.out / "report.png")
        scroll_to(browser, "Slides", right=True)
        save(browser, args.out / "report-slides.png")
        server = ViewerProcess(results)
        browser.navigate(server.url)
        save(browser, args.out / "viewer-index.png")
        browser.navigate(f"{server.url}slide/{SLIDE[1]}")
        browser.wait_for("window.wsiproc && wsiproc.isIdle()", timeout_s=120, settle_s=0.5)
        save(browser, args.out / "viewer-slide.png")
    finally:
        browser.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
