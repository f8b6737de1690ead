"""The ``report`` command at cohort scale: 10,000 generated per-slide records, the real CLI.

Issue 9: ``report.html`` must stay under 20 MB at 10,000 slides, with thumbnails as links to
files, and every slide of the sheet must get exactly one line in it and in ``summary.tsv``.
"""

from __future__ import annotations

import csv
import html
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from report_run import Records, write_records

from wsiproc.cli import main
from wsiproc.cohort import FAILED, NOT_RUN

N_SLIDES = 10_000
MAX_REPORT_MB = 20
ROW = re.compile(r'<tr data-status="([^"]+)"[^>]*><td>(.*?)</td><td>([^<]*)</td><td>([^<]*)</td>')
"""A line of the slide table: status, thumbnail cell, patient, slide id."""


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Records:
    """10,000 slides' records, reported once by the real CLI in a subprocess."""
    records = write_records(tmp_path_factory.mktemp("cohort10k"), N_SLIDES)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "wsiproc", "report", *records.report_argv()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed_s = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    size_mb = records.layout.report_html.stat().st_size / 1e6
    print(f"report of {N_SLIDES} slides: {size_mb:.1f} MB in {elapsed_s:.1f} s")
    return records


def slide_lines(page: str) -> list[tuple[str, str, str, str]]:
    """(status, thumbnail cell, patient, slide) of every line of the slide table."""
    table = page[page.index('<table id="slides"') :]
    return ROW.findall(table[: table.index("</table>")])


def test_report_of_10000_slides_is_small_and_lists_each_once(big_run: Records) -> None:
    html_path = big_run.layout.report_html
    assert html_path.stat().st_size < MAX_REPORT_MB * 1e6
    page = html_path.read_text(encoding="utf-8")
    assert "data:image" not in page
    lines = slide_lines(page)
    assert Counter(slide for *_, slide in lines) == Counter(list(big_run.expected))
    for status, _, patient, slide in lines:
        assert (patient, status) == big_run.expected[slide]


def test_report_thumbnails_are_lazy_links_to_existing_files(big_run: Records) -> None:
    page = big_run.layout.report_html.read_text(encoding="utf-8")
    folder = big_run.layout.report_html.parent
    with_thumb = 0
    for status, cell, patient, slide in slide_lines(page):
        src = re.search(r'<img class="thumb" loading="lazy" src="([^"]+)"', cell)
        if status in (FAILED, NOT_RUN):
            assert src is None
            continue
        assert src is not None, slide
        target = folder / unquote(html.unescape(src.group(1)))
        assert target.resolve() == big_run.layout.slide_file(patient, slide, "thumbnail.png")
        assert target.is_file()
        with_thumb += 1
    assert with_thumb == sum(s not in (FAILED, NOT_RUN) for _, s in big_run.expected.values())


def test_summary_tsv_of_10000_slides_has_each_status(big_run: Records) -> None:
    with open(big_run.layout.summary_tsv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == N_SLIDES
    assert {r["slide_id"]: (r["patient"], r["status"]) for r in rows} == big_run.expected
    assert Counter(r["status"] for r in rows) == Counter(s for _, s in big_run.expected.values())


def test_thumbnail_links_follow_a_report_written_elsewhere(tmp_path: Path) -> None:
    records = write_records(tmp_path / "run", 6)
    out_html = tmp_path / "elsewhere" / "deep" / "report.html"
    assert main(["report", *records.report_argv(out_html)]) == 0
    page = out_html.read_text(encoding="utf-8")
    sources = re.findall(r'<img class="thumb" loading="lazy" src="([^"]+)"', page)
    assert sources and all(s.startswith("../../run/results/") for s in sources)
    assert all((out_html.parent / unquote(s)).is_file() for s in sources)
    # The viewer command names the run's results folder, not the report's.
    assert f"wsiproc view {records.layout.results.resolve()}" in page
