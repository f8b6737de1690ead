"""The workflow's slide-model stage (issue 16): config, planning, a real run with a failure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, output_of, planned_jobs, rule_counts, snakemake, write_config

from wsiproc.cli import build_parser
from wsiproc.demo import demo_cohort


def test_cli_defaults_equal_the_schema_defaults() -> None:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["slide_model"]["properties"]
    args = build_parser("slide_predict").parse_args(
        ["slide-predict", "f.h5", "--model", "m.pt", "--out", "s.json", "--attention-out", "a.csv"]
    )
    assert args.attention_threshold == props["attention_threshold"]["default"]
    assert args.device == props["device"]["default"]
    assert args.allow_encoder_mismatch is props["allow_encoder_mismatch"]["default"] is False
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["slide_model"]
    assert config == {key: spec["default"] for key, spec in props.items()}


def small_cohort(tmp_path: Path, slides: tuple[str, ...]) -> Path:
    """The demo cohort cut down to ``slides``; returns its config path."""
    config_path = demo_cohort(tmp_path)
    sheet = tmp_path / "samples.tsv"
    lines = sheet.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[1] in slides]
    sheet.write_text("\n".join(keep) + "\n")
    return config_path


def test_enabled_slide_model_plans_features_prediction_and_cohort_tables(tmp_path: Path) -> None:
    config_path = small_cohort(tmp_path, ("P1_A", "P3_A"))
    config = yaml.safe_load(config_path.read_text())
    config["features"]["enabled"] = False  # the slide model asks for the features it needs
    proc = snakemake(tmp_path, "-n", "--configfile", str(write_config(config_path, config)))
    assert proc.returncode == 0, output_of(proc)
    counts = rule_counts(planned_jobs(proc.stdout))
    assert counts["features"] == counts["slide_predict"] == counts["attention_heatmap"] == 2
    assert counts["predictions"] == 1 and "features_table" not in counts


@pytest.mark.slow
def test_demo_chain_then_a_broken_features_file_fails_only_its_slide(tmp_path: Path) -> None:
    """features -> slide_predict -> attention heatmap -> predictions.tsv on two demo slides;
    then one slide's features.h5 is truncated: with --keep-going only that slide fails, at
    slide_predict, and predictions.tsv (written by the onerror handler) says so."""
    config = small_cohort(tmp_path, ("P1_A", "P3_A", "P1_B"))
    proc = snakemake(tmp_path, "--configfile", str(config))
    assert proc.returncode == 0, output_of(proc)
    results = tmp_path / "results"
    with open(results / "predictions.tsv", newline="") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert rows["P1_A"]["status"] in ("ok", "flagged") and rows["P1_A"]["predicted_class"]
    assert rows["P3_A"]["qc_flags"] == "no_patches"  # glass only: flagged, not failed
    slide = json.loads((results / "P1" / "P1_A" / "slide.json").read_text())
    assert slide["model"] == "abmil-demo" and slide["n_patches"] > 0
    qc = json.loads((results / "P1" / "P1_A" / "qc.json").read_text())
    assert qc["prediction"]["predicted_class"] == slide["predicted_class"]
    assert qc["features"]["patches"] == slide["n_patches"]
    for name in ("attention.tif", "attention_rgb.tif", "attention.geojson", "attention.png"):
        assert (results / "P1" / "P1_A" / name).is_file()

    h5 = results / "P1" / "P1_B" / "features.h5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 3])  # newer than slide.json: slide_predict reruns
    proc = snakemake(tmp_path, "--configfile", str(config), "--keep-going")
    assert proc.returncode != 0
    with open(results / "predictions.tsv", newline="") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert rows["P1_B"]["status"] == "failed" and str(h5) in rows["P1_B"]["error"]
    assert rows["P1_A"]["status"] in ("ok", "flagged")
    assert not (results / "P1" / "P1_B" / "slide.json").exists()
    # The report (written by the onerror handler too) lists the slide as failed at that stage.
    with open(results / "summary.tsv", newline="") as fh:
        summary = {r["slide_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    failed = summary["P1_B"]
    assert (failed["status"], failed["failed_stage"]) == ("failed", "slide_predict")
    assert str(h5) in failed["error"] and failed["log"].endswith("slide_predict/P1/P1_B.log")
    assert summary["P1_A"]["predicted_class"] == rows["P1_A"]["predicted_class"]
    assert "failed (slide_predict)" in (results / "report.html").read_text()
