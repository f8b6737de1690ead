"""features.tsv and the workflow's features stage (issue 15).

The table's statuses come from files on disk, as for the other stages; the workflow's
``features_all`` target plans only level selection and features, so it runs without the
heatmap model; the CLI's defaults equal the config schema's.
"""

from __future__ import annotations

import csv
from pathlib import Path

import yaml
from test_workflow import REPO, output_of, planned_jobs, rule_counts, snakemake, write_config

from wsiproc.cli import build_parser, main


def _table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["slide"]: row for row in csv.DictReader(fh, delimiter="\t")}


def test_table_lists_ok_failed_and_not_run_slides(svs_slide_20x, tmp_path, capsys):
    results, logs = tmp_path / "results", tmp_path / "logs"
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("patient\tslide\tpath\nP1\tA\ta.svs\nP1\tB\tb.svs\nP2\tC\tc.svs\n")
    out = results / "P1" / "A" / "features.h5"
    assert (
        main(
            [
                "features",
                str(svs_slide_20x),
                "--encoder",
                "builtin:tiny",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    bad_log = logs / "features" / "P1" / "B.log"
    bad_log.parent.mkdir(parents=True)
    bad_log.write_text("error: enc.pt.json: key 'output_dim': missing\n")
    tsv = tmp_path / "features.tsv"
    rc = main(
        [
            "features-table",
            "--sheet",
            str(sheet),
            "--results",
            str(results),
            "--logs",
            str(logs),
            "--out",
            str(tsv),
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip() == "wsiproc: features: 1 ok, 1 not run, 1 failed: B"
    rows = _table(tsv)
    assert rows["A"]["status"] == "ok" and rows["A"]["D"] == "128" and int(rows["A"]["N"]) > 10
    assert rows["A"]["encoder"] == "builtin:tiny" and float(rows["A"]["patches_per_s"]) > 0
    assert (
        rows["B"]["status"] == "failed"
        and rows["B"]["error"] == "enc.pt.json: key 'output_dim': missing"
    )
    assert rows["B"]["log"] == str(bad_log)
    assert rows["C"]["status"] == "not run" and rows["C"]["N"] == "NA"


def test_features_all_plans_no_heatmap_model_job(tmp_path):
    """A model file that does not exist does not matter to `snakemake features_all`."""
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a.svs").write_bytes(b"placeholder")
    (tmp_path / "samples.tsv").write_text("patient\tslide\tpath\nP1\tS1\tslides/a.svs\n")
    config = {
        "samples": "samples.tsv",
        "outdir": "results",
        "logdir": "logs",
        "model": {"path": "missing_model.pt"},
        "features": {"exports": ["stamp", "clam"]},
    }
    configfile = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(tmp_path, "features_all", "-n", "--configfile", str(configfile))
    assert proc.returncode == 0, output_of(proc)
    counts = rule_counts(planned_jobs(proc.stdout))
    assert counts == {"select_level": 1, "features": 1, "features_table": 1, "features_all": 1}


def test_cli_defaults_equal_the_schema_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["features"]["properties"]
    parser = build_parser("features")
    args = parser.parse_args(["features", "s.svs", "--encoder", "e.pt", "--out", "f.h5"])
    assert args.min_tissue == props["min_tissue"]["default"]
    assert args.batch_size == props["batch_size"]["default"]
    assert args.device == props["device"]["default"]
    assert args.patch_size is props["patch_size"]["default"] is None
    assert args.stride is props["stride"]["default"] is None
    assert args.mpp is props["mpp"]["default"] is None
    assert args.precision is props["precision"]["default"] is None
    assert args.export == props["exports"]["default"] == []
