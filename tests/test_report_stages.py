"""Features and slide-model results in qc.json, qc.html, report.html and summary.tsv.

Real stages in-process on a generated slide, in the workflow's layout: level -> infer ->
heatmap -> features -> slide-predict -> attention heatmap (+ thumbnail) -> qc -> report. A
second slide's features.h5 is truncated, so its slide_predict fails as in a ``--keep-going``
run: the report must list it as failed at that stage, with the error and the log.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from wsiproc.cli import main
from wsiproc.cohort import FAILED, Layout, cohort_status

PATIENT = "P1"


def run(*argv: object) -> None:
    """One wsiproc stage in-process; it must succeed."""
    assert main([str(a) for a in argv]) == 0, argv


def stage_log(layout: Layout, rule: str, slide: str, *argv: object) -> int:
    """One stage in a subprocess with its output in the workflow's log, as a rule runs it."""
    log = layout.slide_log(rule, PATIENT, slide)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        cmd = [sys.executable, "-m", "wsiproc", *map(str, argv)]
        return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode


def slide_chain(slide: Path, layout: Layout, slide_id: str) -> Path:
    """level -> infer -> heatmap -> features -> slide-predict -> attention heatmap, each with
    an empty log as the workflow leaves one; returns the slide's folder."""
    d = layout.results / PATIENT / slide_id
    d.mkdir(parents=True)

    def logged(rule: str) -> None:
        log = layout.slide_log(rule, PATIENT, slide_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")

    run("level", slide, "--out", d / "level.json", "--thumbnail", d / "thumbnail.png",
        "--mask", d / "mask.png")  # fmt: skip
    logged("select_level")
    run("infer", slide, "--out", d / "windows.csv", "--model", "builtin:mean-rgb",
        "--kernel-size", "224", "--stride", "224", "--workers", "1", "--device", "cpu",
        "--quiet", "--patient", PATIENT, "--slide-id", slide_id)  # fmt: skip
    logged("infer")
    run("heatmap", d / "windows.csv", "--out", d / "heatmap.tif",
        "--rgb-out", d / "heatmap_rgb.tif")  # fmt: skip
    logged("heatmap")
    run("features", slide, "--encoder", "builtin:tiny", "--out", d / "features.h5",
        "--workers", "1", "--quiet", "--patient", PATIENT, "--slide-id", slide_id)  # fmt: skip
    logged("features")
    return d


def predict(layout: Layout, d: Path) -> int:
    """slide-predict with the demo model, logged like the rule."""
    return stage_log(
        layout, "slide_predict", d.name, "slide-predict", d / "features.h5",
        "--model", "builtin:abmil-demo", "--out", d / "slide.json",
        "--attention-out", d / "attention.csv", "--patient", PATIENT, "--slide-id", d.name,
        "--device", "cpu",
    )  # fmt: skip


def qc(d: Path, *extra: object) -> None:
    run("qc", "slide.svs", "--level-json", d / "level.json", "--windows", d / "windows.csv",
        "--out", d / "qc.json", "--html", d / "qc.html", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, svs_slide_20x: Path) -> Layout:
    """Slide A through every stage; slide B failing at slide_predict (truncated h5)."""
    root = tmp_path_factory.mktemp("stages")
    layout = Layout(root / "results", root / "logs")
    a = slide_chain(svs_slide_20x, layout, "A")
    b = layout.results / PATIENT / "B"
    shutil.copytree(a, b)
    for rule in ("select_level", "infer", "heatmap", "features"):
        log = layout.slide_log(rule, PATIENT, "B")
        shutil.copy(layout.slide_log(rule, PATIENT, "A"), log)
    assert predict(layout, a) == 0
    assert stage_log(
        layout, "attention_heatmap", "A", "heatmap", a / "attention.csv",
        "--out", a / "attention.tif", "--rgb-out", a / "attention_rgb.tif",
        "--thumbnail-out", a / "attention.png", "--color-scale", "rank",
    ) == 0  # fmt: skip
    qc(a, "--features-json", a / "features.json", "--slide-json", a / "slide.json")
    layout.slide_log("qc", PATIENT, "A").parent.mkdir(parents=True)
    layout.slide_log("qc", PATIENT, "A").write_text("")
    data = (b / "features.h5").read_bytes()
    (b / "features.h5").write_bytes(data[: len(data) // 3])
    assert predict(layout, b) != 0
    (root / "samples.tsv").write_text(f"patient\tslide\tpath\n{PATIENT}\tA\ta\n{PATIENT}\tB\tb\n")
    run("report", "--sheet", root / "samples.tsv", "--results", layout.results,
        "--logs", layout.logs, "--features", "--slide-model",
        "--out-html", layout.report_html, "--out-tsv", layout.summary_tsv)  # fmt: skip
    return layout


def test_qc_json_and_page_show_features_and_prediction(run_dir: Layout) -> None:
    d = run_dir.results / PATIENT / "A"
    record = json.loads((d / "qc.json").read_text())
    features = json.loads((d / "features.json").read_text())
    slide = json.loads((d / "slide.json").read_text())
    assert record["features"]["encoder"] == features["model"] == "builtin:tiny"
    assert record["features"]["patches"] == features["windows_processed"] > 0
    assert record["features"]["patches_per_s"] == features["windows_per_s"]
    pred = record["prediction"]
    assert pred["values"] == slide["probabilities"] and pred["classes"] == slide["classes"]
    assert pred["predicted_class"] == slide["predicted_class"]
    assert pred["attention_off_tissue"] == max(slide["attention_off_tissue_share"])
    page = (d / "qc.html").read_text()
    assert "<h2>Features</h2>" in page and "<h2>Slide prediction</h2>" in page
    assert "Patches embedded" in page and "Attention on background" in page
    for name in slide["classes"]:
        assert f"P({name})" in page


def test_qc_carries_the_off_tissue_flag(run_dir: Layout, tmp_path: Path) -> None:
    """A slide.json whose attention lies off tissue flags the slide in qc.json."""
    d = run_dir.results / PATIENT / "A"
    copy = tmp_path / "A"
    shutil.copytree(d, copy)
    slide = json.loads((copy / "slide.json").read_text())
    slide["qc_flags"] = ["attention_off_tissue"]
    (copy / "slide.json").write_text(json.dumps(slide))
    qc(copy, "--slide-json", copy / "slide.json")
    record = json.loads((copy / "qc.json").read_text())
    assert "attention_off_tissue" in record["flags"] and record["features"] is None
    assert "flagged (threshold" in (copy / "qc.html").read_text()


def test_report_lists_predictions_and_the_failed_slide_predict(run_dir: Layout) -> None:
    slide = json.loads((run_dir.results / PATIENT / "A" / "slide.json").read_text())
    with open(run_dir.summary_tsv, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows = {r["slide_id"]: r for r in reader}
        header = reader.fieldnames or []
    probs = [f"prob_{c}" for c in slide["classes"]]
    assert header[header.index("flags") + 1 :][:4] == [
        "features_encoder", "features_patches", "features_patches_per_s", "predicted_class",
    ]  # fmt: skip
    assert set(probs) <= set(header)
    a = rows["A"]
    assert a["predicted_class"] == slide["predicted_class"]
    assert [float(a[p]) for p in probs] == pytest.approx(slide["probabilities"], rel=1e-5)
    assert a["features_encoder"] == "builtin:tiny" and int(a["features_patches"]) > 0
    b = rows["B"]
    assert (b["status"], b["failed_stage"]) == (FAILED, "slide_predict")
    assert "features.h5" in b["error"] and b["log"].endswith("slide_predict/P1/B.log")

    page = run_dir.report_html.read_text()
    assert "<th>Predicted class</th>" in page.replace(' data-sort="text"', "")
    for name in slide["classes"]:
        assert f'<th data-sort="num">P({name})</th>' in page
    src = page.split('alt="attention heatmap"')[0].rsplit('src="', 1)[1].split('"')[0]
    thumb = run_dir.report_html.parent / unquote(src)
    assert thumb.resolve() == (run_dir.results / PATIENT / "A" / "attention.png").resolve()
    with Image.open(thumb) as image:
        assert max(image.size) == 256 and image.mode == "RGBA"
    assert 'loading="lazy" src="' + src in page
    assert "failed (slide_predict)" in page


def test_stage_flags_decide_which_stages_count(run_dir: Layout) -> None:
    """Without --slide-model, B's failed slide_predict is not part of the run's chain."""
    sheet = run_dir.results.parent / "samples.tsv"
    plain = cohort_status(sheet, run_dir.results, run_dir.logs, features=True)
    assert plain.slides[0].status in ("ok", "flagged")
    assert plain.slides[1].status == "not run"  # B has no qc.json
    full = cohort_status(sheet, run_dir.results, run_dir.logs, slide_model=True)
    assert [s.stage for s in full.slides] == [None, "slide_predict"]
