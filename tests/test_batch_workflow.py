"""The workflow with features.slides_per_job and slide_model.slides_per_job > 1 (issue 19,
item 3): the batch jobs it plans, and a real local run with K = 2 against K = 1 on the demo
slides plus a slide that cannot be opened and one whose full-resolution tile is corrupt."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import h5py
import pytest
import yaml
from test_workflow import (
    REPO,
    dry_run,
    output_of,
    planned_jobs,
    rule_counts,
    snakemake,
    write_config,
)

from wsiproc import synth
from wsiproc.batch.keep import LOADED_LINE
from wsiproc.demo import demo_cohort

SLIDES = ("P1_A", "P1_B", "P2_A", "P3_A")
# Level selection fails on the first (not a slide); the second opens (its thumbnail level is
# intact) but its level 0, which the features read at 0.5 µm/px, has a zeroed tile.
BROKEN = ("P3", "P3_broken")
CORRUPT = ("P2", "P2_corrupt")


def batch_cohort(root: Path, k_features: int, k_model: int) -> Path:
    """Demo slides P1_A, P1_B, P2_A + CORRUPT, P3_A + BROKEN (three batches of two at K = 2),
    features and slide model on; returns the config."""
    config_path = demo_cohort(root)
    slides = root / "slides"
    (slides / "broken.svs").write_bytes(b"II*\x00" + os.urandom(4096))
    corrupt = synth.write_pyramidal_tiff(
        slides / "corrupt.tif", synth.tissue_image(2048, 2048, seed=14), mpp=0.5
    )
    synth.corrupt_tile(corrupt)
    sheet = root / "samples.tsv"
    rows = {ln.split("\t")[1]: ln for ln in sheet.read_text().splitlines()[1:]}
    lines = ["patient\tslide\tpath\tmpp", rows["P1_A"], rows["P1_B"], rows["P2_A"]]
    lines += [f"{CORRUPT[0]}\t{CORRUPT[1]}\tslides/corrupt.tif\t", rows["P3_A"]]
    lines += [f"{BROKEN[0]}\t{BROKEN[1]}\tslides/broken.svs\t"]
    sheet.write_text("\n".join(lines) + "\n")
    config = yaml.safe_load(config_path.read_text())
    config["features"].update(enabled=True, slides_per_job=k_features, exports=["stamp"])
    config["slide_model"].update(enabled=True, slides_per_job=k_model)
    return write_config(config_path, config)


def test_batches_plan_one_job_per_batch_and_finish_per_slide(tmp_path: Path) -> None:
    config = batch_cohort(tmp_path, 2, 4)
    counts = rule_counts(dry_run(tmp_path, config))
    # Features: P1 | P2 | P3 (two slides each); slide model: P1 + P2 | P3.
    assert counts["features_batch"] == 3 and counts["slide_predict_batch"] == 2
    assert counts["features"] == counts["slide_predict"] == 6
    data = yaml.safe_load(config.read_text())
    data["features"]["slides_per_job"] = data["slide_model"]["slides_per_job"] = 1
    counts = rule_counts(dry_run(tmp_path, write_config(tmp_path / "one.yaml", data)))
    assert "features_batch" not in counts and "slide_predict_batch" not in counts
    assert counts["features"] == counts["slide_predict"] == 6


def _table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["slide"]: row for row in csv.DictReader(fh, delimiter="\t")}


@pytest.mark.slow
def test_two_slides_per_job_equal_one_and_a_broken_slide_fails_alone(tmp_path: Path) -> None:
    config = batch_cohort(tmp_path, 2, 2)
    one = yaml.safe_load(config.read_text())
    one["features"]["slides_per_job"] = one["slide_model"]["slides_per_job"] = 1
    one.update(outdir=str(tmp_path / "k1"), logdir=str(tmp_path / "k1_logs"))
    configs = {2: config, 1: write_config(tmp_path / "one.yaml", one)}

    def wanted_of(out: str) -> list[str]:
        return [str(tmp_path / out / name) for name in ("features.tsv", "predictions.tsv")]

    for k, out in ((2, "results"), (1, "k1")):
        args = ["--configfile", str(configs[k]), "--keep-going"]
        args += ["--config", f"outdir={tmp_path / out}", f"logdir={tmp_path / out}_logs"]
        run = snakemake(tmp_path, *wanted_of(out), *args)
        assert run.returncode != 0, output_of(run)  # the two broken slides
    logs = tmp_path / "results_logs"
    # One job per batch, each loading the encoder (the slide model) once.
    for rule, n in (("features_batch", 3), ("slide_predict_batch", 3)):
        batch_logs = sorted((logs / rule).glob("b*.log"))
        assert len(batch_logs) == n, batch_logs
        for log in batch_logs:
            assert log.read_text().count(LOADED_LINE) == 1, log.read_text()
    # The same features and coords as one process per slide.
    good = ("P1/P1_A", "P1/P1_B", "P2/P2_A", "P3/P3_A")
    for slide in good:
        with (
            h5py.File(tmp_path / "results" / slide / "features.h5") as a,
            h5py.File(tmp_path / "k1" / slide / "features.h5") as b,
        ):
            for name in ("features", "coords"):
                assert a[name][()].tobytes() == b[name][()].tobytes(), (slide, name)
        assert (tmp_path / "results" / slide / "stamp").is_dir()
    # The corrupt slide fails alone at its features job, with its one line; its batch mate
    # P2_A (and every other slide) gets its prediction. The slide that cannot be opened
    # fails at level selection: its features are "not run", as with one slide per job.
    table = _table(tmp_path / "results" / "features.tsv")
    timings = ("patches_per_s", "runtime_s", "features_h5", "log")
    for slide, row in _table(tmp_path / "k1" / "features.tsv").items():
        same = {c: v for c, v in row.items() if c not in timings}
        assert same == {c: v for c, v in table[slide].items() if c not in timings}
    assert table[CORRUPT[1]]["status"] == "failed"
    assert "corrupt or truncated tile" in table[CORRUPT[1]]["error"]
    assert table[BROKEN[1]]["status"] == "not run"
    log = (logs / "features" / CORRUPT[0] / f"{CORRUPT[1]}.log").read_text().splitlines()
    assert len(log) == 1 and log[0] == f"error: {table[CORRUPT[1]]['error']}"
    predictions = _table(tmp_path / "results" / "predictions.tsv")
    for slide in good:
        assert predictions[slide.split("/")[1]]["status"] in ("ok", "flagged")
    assert predictions[CORRUPT[1]]["status"] == predictions[BROKEN[1]]["status"] == "not run"
    # A rerun has nothing to do for the slides that worked: no batch job reruns.
    again = snakemake(tmp_path, "-n", *wanted_of("results"), "--configfile", str(config))
    assert again.returncode == 0, output_of(again)
    jobs = planned_jobs(again.stdout)
    assert {rule for rule, _ in jobs} <= {"features", "slide_predict", "select_level",
                                          "attention_heatmap", "features_table", "predictions",
                                          "infer"}, jobs  # fmt: skip
    assert {slide for _, slide in jobs if slide} <= {CORRUPT[1], BROKEN[1]}, jobs
    # One slide changed: its batch reruns (both of its slides), no other batch.
    os.utime(tmp_path / "slides" / "P1_A.svs")
    again = snakemake(tmp_path, "-n", *wanted_of("results"), "--configfile", str(config))
    jobs = planned_jobs(again.stdout)
    assert rule_counts(jobs)["features_batch"] == 1, jobs
    rerun = {slide for rule, slide in jobs if rule == "features"}
    assert {"P1_A", "P1_B"} <= rerun <= {"P1_A", "P1_B", CORRUPT[1], BROKEN[1]}, jobs
    assert not {slide for _, slide in jobs} & {"P2_A", "P3_A"}, jobs


def test_slides_per_job_defaults_to_one_and_zero_is_refused(tmp_path: Path) -> None:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    template = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for section in ("features", "slide_model"):
        spec = schema["properties"][section]["properties"]["slides_per_job"]
        assert spec["default"] == template[section]["slides_per_job"] == spec["minimum"] == 1
    config = batch_cohort(tmp_path, 0, 1)
    proc = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert proc.returncode != 0
    assert "invalid config: features.slides_per_job: 0 is less than the minimum of 1" in (
        output_of(proc)
    )
