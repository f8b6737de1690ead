"""The cohort report in a real browser: headless Debian chromium opens a generated
``report.html`` from disk, sorts its slide table by clicking headers and filters it.

What is checked is what a user sees: the order and the set of visible rows after real mouse
clicks and typed text. Like the viewer's browser tests, these fail without chromium unless
WSIPROC_ALLOW_NO_BROWSER=1.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import Chromium, browser_or_fail
from report_run import Records, write_records

from wsiproc.cli import main
from wsiproc.cohort import FAILED, NOT_RUN

N_SLIDES = 30
VISIBLE_SLIDES = (
    "Array.from(document.querySelectorAll('#slides tbody tr'))"
    ".filter(r => !r.hidden && r.offsetParent !== null).map(r => r.cells[2].textContent)"
)
"""The slide ids of the slide table's visible lines, top to bottom."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    """One headless chromium for the module; fails (does not skip) without chromium."""
    chrome = browser_or_fail(width=1400, height=900)
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Records:
    """30 generated slides (ok, flagged, failed, not run) and their report."""
    made = write_records(tmp_path_factory.mktemp("cohort_page"), N_SLIDES)
    assert main(["report", *made.report_argv()]) == 0
    return made


@pytest.fixture
def page(browser: Chromium, records: Records) -> Chromium:
    """The report, freshly loaded from disk."""
    browser.navigate(records.layout.report_html.as_uri())
    return browser


def click_header(browser: Chromium, title: str) -> None:
    """A real mouse click on the slide table's header cell ``title``."""
    box = browser.evaluate(
        "(() => { const th = Array.from(document.querySelectorAll('#slides th'))"
        f".find(h => h.textContent === {json.dumps(title)}); th.scrollIntoView();"
        " const r = th.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
        " })()"
    )
    browser.click(*box)


def test_clicking_a_header_sorts_the_slides_and_again_reverses(
    page: Chromium, records: Records
) -> None:
    with open(records.layout.summary_tsv, newline="", encoding="utf-8") as fh:
        numbers = {r["slide_id"]: r["runtime_s"] for r in csv.DictReader(fh, delimiter="\t")}
    with_runtime = sorted((float(v), s) for s, v in numbers.items() if v != "NA")
    without = [s for s, v in numbers.items() if v == "NA"]
    assert page.evaluate(VISIBLE_SLIDES) == sorted(numbers)  # as written: patient, slide
    click_header(page, "Runtime (s)")
    shown = page.evaluate(VISIBLE_SLIDES)
    assert shown[: len(with_runtime)] == [s for _, s in with_runtime]
    assert sorted(shown[len(with_runtime) :]) == sorted(without)  # empty cells last
    click_header(page, "Runtime (s)")
    shown = page.evaluate(VISIBLE_SLIDES)
    assert shown[: len(with_runtime)] == [s for _, s in reversed(with_runtime)]
    assert page.evaluate("document.querySelector('#slides th[aria-sort]').textContent") == (
        "Runtime (s)"
    )
    click_header(page, "Slide")
    assert page.evaluate(VISIBLE_SLIDES) == sorted(numbers)


def test_text_and_status_filters_hide_other_slides(page: Chromium, records: Records) -> None:
    page.evaluate("document.querySelector('.filters[data-for=slides] .filter-text').focus()")
    page.send("Input.insertText", text="s0001")
    assert page.evaluate(VISIBLE_SLIDES) == [f"S0001{i}" for i in range(10)]
    count = "document.querySelector('.filters[data-for=slides] .filter-count').textContent"
    assert page.evaluate(count) == f"10 of {N_SLIDES} shown"
    page.evaluate(
        "(() => { const s = document.querySelector('.filters[data-for=slides] .filter-status');"
        " s.value = 'flagged'; s.dispatchEvent(new Event('change')); })()"
    )
    flagged = sorted(s for s, (_, st) in records.expected.items() if st == "flagged")
    assert page.evaluate(VISIBLE_SLIDES) == [s for s in flagged if s.startswith("S0001")]
    page.evaluate(
        "(() => { const t = document.querySelector('.filters[data-for=slides] .filter-text');"
        " t.value = ''; t.dispatchEvent(new Event('input')); })()"
    )
    assert page.evaluate(VISIBLE_SLIDES) == flagged
    for status in (FAILED, NOT_RUN):
        page.evaluate(
            "(() => { const s = document.querySelector('.filters[data-for=slides] "
            f".filter-status'); s.value = {json.dumps(status)};"
            " s.dispatchEvent(new Event('change')); })()"
        )
        want = sorted(s for s, (_, st) in records.expected.items() if st == status)
        assert want and page.evaluate(VISIBLE_SLIDES) == want


def test_report_page_loads_only_local_files(page: Chromium, records: Records) -> None:
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for(
        "Array.from(document.images).filter(i => i.getBoundingClientRect().top"
        " < innerHeight && i.getBoundingClientRect().bottom > 0).every(i => i.complete"
        " && i.naturalWidth > 0)"
    )
    requests = page.requests()
    assert requests and all(url.startswith("file://") for url in requests)
    results = Path(records.layout.results).as_uri()
    thumbs = [u for u in requests if u.endswith("/thumbnail.png")]
    assert thumbs and all(u.startswith(results) for u in thumbs)
