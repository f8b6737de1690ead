"""The pages' templates (wsiproc/templates/, rendered by :mod:`wsiproc.webpage`): names and
errors with markup, quotes and non-ASCII come out as the same text, never as markup.

Issue 18: every page goes through the real render function (the report through ``wsiproc
report``), and the result is parsed by Python's HTML parser, as a browser would read it.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

from test_qc import make_slide_inputs, run_qc

from wsiproc.cli import main
from wsiproc.cohort import FAILED, NOT_RUN
from wsiproc.viewer.catalog import SlideEntry
from wsiproc.viewer.pages import render_index, render_slide
from wsiproc.viewer.resources import SlideResources
from wsiproc.webpage import render_page, static_text

PATIENT = '<script>alert("P\'1")'
"""A patient id that would run a script, and close an attribute of either quote, if unescaped
(no slash: it is also a folder name)."""

SLIDE = 'Ünïcødé "S1" <img src=x onerror=alert(1)> &amp;'
ERROR = "cannot read <b>tile</b> at 'x' & \"y\" — naïve"


class Page(HTMLParser):
    """A parsed page: its start tags with attributes, its text, and each script's content."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def joined(self) -> str:
        return "".join(self.text)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def attribute_values(self) -> list[str]:
        return [v for _, attrs in self.tags for v in attrs.values() if v is not None]


def assert_no_injected_markup(page: Page) -> None:
    """No element or attribute that only the hostile names could have made."""
    assert not [attrs for attrs in page.named("img") if "onerror" in attrs]
    assert all(attrs.get("src") != "x" for attrs in page.named("img"))
    assert not page.named("b") and not page.named("i")


def test_qc_page_shows_hostile_names_as_text(tmp_path: Path) -> None:
    inputs = make_slide_inputs(tmp_path, "S1")
    meta_path = inputs["dir"] / "windows.json"
    meta = json.loads(meta_path.read_text())
    meta.update(patient=PATIENT, slide_id=SLIDE)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    code, out = run_qc(inputs)
    assert code == 0

    page = Page(out.with_suffix(".html").read_text(encoding="utf-8"))
    assert_no_injected_markup(page)
    assert not page.named("script")
    assert f"QC: {PATIENT} / {SLIDE}" in page.joined()
    assert f"Slide ID{SLIDE}" in page.joined()
    viewer = [a for a in page.named("a") if a.get("class") == "wsiproc-view"]
    assert [a["href"] for a in viewer] == [f"/slide/{quote(SLIDE, safe='')}"]


def test_report_shows_hostile_names_and_errors_as_text(tmp_path: Path) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(
        f"patient\tslide\tpath\n{PATIENT}\t{SLIDE}\ta.svs\n{PATIENT}\tS2\tb.svs\n",
        encoding="utf-8",
    )
    log = logs / "select_level" / PATIENT / f"{SLIDE}.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"error: {ERROR}\n", encoding="utf-8")
    out = results / "report.html"
    argv = ["report", "--sheet", str(sheet), "--results", str(results), "--logs", str(logs)]
    assert main([*argv, "--out-html", str(out), "--out-tsv", str(results / "summary.tsv")]) == 0

    page = Page(out.read_text(encoding="utf-8"))
    assert_no_injected_markup(page)
    assert (
        len(page.named("script")) == 1
        and page.scripts[0].strip() == static_text("sortable.js").strip()
    )
    text = page.joined()
    assert f"{PATIENT}{SLIDE}select_level{ERROR}" in text  # the failed slides' line
    assert f"{PATIENT}2{FAILED}none: slide {SLIDE} failed" in text  # the patient line
    rows = [attrs for attrs in page.named("tr") if "data-status" in attrs]
    assert {attrs["data-status"] for attrs in rows} == {FAILED, NOT_RUN}
    links = [attrs["href"] for attrs in page.named("a") if attrs["href"].endswith(".log")]
    assert links and all((out.parent / unquote(h)).resolve() == log.resolve() for h in links)


def test_viewer_pages_show_hostile_names_as_text(tmp_path: Path) -> None:
    entry = SlideEntry(
        patient=PATIENT + "</script>",
        slide_id=SLIDE,
        status=FAILED,
        flags=("pen<marks>",),
        folder=tmp_path,
        failed_stage="infer",
        error=ERROR,
    )
    index = Page(render_index(str(tmp_path / "rés<ults>"), [entry]))
    assert_no_injected_markup(index)
    assert not index.named("script")
    text = index.joined()
    assert f"Patient {PATIENT}</script>" in text and SLIDE in text and f"infer: {ERROR}" in text
    assert "rés<ults>" in text and "pen<marks>" in text
    assert [a["data-slide"] for a in index.named("tr") if "data-slide" in a] == [SLIDE]

    resources = SlideResources(
        entry=entry,
        signature=(),
        tiler=None,
        slide_error=f"slide file gone: {SLIDE}",
        record=None,
        raster=None,
        table=None,
        overlay_error=None,
    )
    slide = Page(render_slide(resources))
    assert_no_injected_markup(slide)
    assert [a.get("src") for a in slide.named("script")] == [
        None,
        "/static/openseadragon/openseadragon.min.js",
        "/static/viewer.js",
    ]
    settings = json.loads(slide.scripts[0])  # the JSON block survives </script> in a name
    assert (settings["patient"], settings["slide"]) == (PATIENT + "</script>", SLIDE)
    assert f"{PATIENT}</script> / {SLIDE}" in slide.joined()
    assert f"slide file gone: {SLIDE}" in slide.joined()


def test_templates_escape_every_value_by_default() -> None:
    page = render_page(
        "viewer_index.html", title='<t "1">', results="r", total=0, summary="", by_patient={}
    )
    assert "<title>&lt;t &#34;1&#34;&gt;</title>" in page


def test_stage_results_show_hostile_names_as_text(tmp_path: Path) -> None:
    """Encoder, model and class names from features.json / slide.json, on the QC page, the
    report and the viewer's side panel."""
    inputs = make_slide_inputs(tmp_path, "S1")
    features = inputs["dir"] / "features.json"
    record = {"model": ERROR, "windows_processed": 7, "windows_per_s": 3.5}
    features.write_text(json.dumps({**record, "output_shape": [4]}), encoding="utf-8")
    slide = inputs["dir"] / "slide.json"
    prediction = {
        "task": "classification", "classes": [PATIENT, SLIDE], "probabilities": [0.25, 0.75],
        "logits": [0.0, 1.1], "predicted_class": SLIDE, "model": ERROR, "n_patches": 7,
        "attention_off_tissue_share": [0.9], "attention_threshold": 0.5,
        "qc_flags": ["attention_off_tissue"],
    }  # fmt: skip
    slide.write_text(json.dumps(prediction), encoding="utf-8")
    code, out = run_qc(inputs, "--features-json", str(features), "--slide-json", str(slide))
    assert code == 0
    page = Page(out.with_suffix(".html").read_text(encoding="utf-8"))
    assert_no_injected_markup(page)
    text = page.joined()
    assert f"Encoder{ERROR}" in text and f"P({PATIENT})0.25" in text
    assert f"Predicted class{SLIDE}" in text and "attention_off_tissue" in text

    from wsiproc.viewer.prediction import read_prediction

    entry = SlideEntry(PATIENT, SLIDE, FAILED, (), tmp_path)
    resources = SlideResources(
        entry, (), None, "no slide", None, None, None, None, prediction=read_prediction(slide)
    )
    viewer = Page(render_slide(resources))
    assert_no_injected_markup(viewer)
    assert f"Predicted class{SLIDE}" in viewer.joined() and f"Model{ERROR}" in viewer.joined()
