"""Make ``docs/viewer.png``: the viewer's page of one demo slide, in headless chromium.

Run after the demo workflow (``wsiproc demo demo`` then ``snakemake --cores 2 --configfile
demo/config.yaml``), from the repository root:

    python docs/viewer_screenshot.py demo/results docs/viewer.png

It starts ``wsiproc view`` on the results, opens slide P2_A, zooms to a third of the slide,
clicks one window (its CSV row shows in the side panel) and saves the page.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chromium import Chromium, find_chromium  # noqa: E402
from viewer_run import ViewerProcess  # noqa: E402

SLIDE = "P2_A"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the demo run's results folder")
    parser.add_argument("out", type=Path, help="PNG to write")
    args = parser.parse_args()
    server = ViewerProcess(args.results)
    browser = Chromium(find_chromium() or "chromium", width=1400, height=820)
    try:
        browser.navigate(f"{server.url}slide/{SLIDE}")
        idle = "window.wsiproc && wsiproc.isIdle()"
        browser.wait_for(idle, timeout_s=120, settle_s=0.5)
        browser.evaluate(
            "(() => { const v = wsiproc.viewer, item = v.world.getItemAt(0);"
            " const r = item.imageToViewportRectangle(2300, 1000, 2600, 1700);"
            " v.viewport.fitBounds(r, true); })()"
        )
        browser.wait_for(idle, timeout_s=120, settle_s=0.5)
        with open(args.results / "P2" / SLIDE / "windows.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        row = min(rows, key=lambda r: abs(int(r["x"]) - 3450) + abs(int(r["y"]) - 1750))
        centre = int(row["x"]) + int(row["width"]) // 2, int(row["y"]) + int(row["height"]) // 2
        x, y = browser.evaluate(f"wsiproc.pageFromImage({centre[0]}, {centre[1]})")
        browser.click(x, y)
        browser.wait_for("!!document.getElementById('window-table')", timeout_s=30)
        browser.wait_for(idle, timeout_s=60, settle_s=0.5)
        browser.save_screenshot(args.out)
    finally:
        browser.close()
        server.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
