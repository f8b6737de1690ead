"""``wsiproc predictions`` (issue 16): per-slide table with status, per-patient mean."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from features_h5 import grid_coords, write_features_h5
from slide_runs import ProjectionAttention, make_bag, predict, run_cli, save_model


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_predictions_table_and_patient_means(tmp_path: Path, capsys) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    (tmp_path / "m").mkdir()
    w = torch.zeros(16)
    w[0] = 20.0
    model = save_model(tmp_path / "m", ProjectionAttention(w, torch.eye(16)[:, :2]), dim=16)
    sheet = [("P1", "S1"), ("P1", "S2"), ("P2", "S3"), ("P2", "S4"), ("P3", "S5")]
    for seed, (patient, slide) in enumerate(sheet[:2]):
        rows, cols, x, _ = make_bag(seed)
        # S2's low-tissue windows draw the attention: flagged.
        tissue = np.where(x[:, 0] > 0, 0.2, 0.9) if slide == "S2" else np.ones(len(x))
        h5 = write_features_h5(
            tmp_path / f"{slide}.h5", x, grid_coords(rows, cols, stride_px=224, scale=2.0),
            tissue=tissue,
        )  # fmt: skip
        out = results / patient / slide
        code, _, err = predict(capsys, h5, model, out, "--patient", patient, "--slide-id", slide)
        assert code == 0, err
    # S3 failed at slide_predict: a log with an error line and no slide.json.
    (logs / "slide_predict" / "P2").mkdir(parents=True)
    (logs / "slide_predict" / "P2" / "S3.log").write_text("error: f.h5: no patches (N = 0)\n")
    (tmp_path / "samples.tsv").write_text(
        "patient\tslide\tpath\n" + "".join(f"{p}\t{s}\tx.svs\n" for p, s in sheet)
    )
    code, out, err = run_cli(
        capsys, "predictions", "--sheet", tmp_path / "samples.tsv", "--results", results,
        "--logs", logs, "--out", tmp_path / "predictions.tsv",
        "--patients-out", tmp_path / "patients.tsv",
    )  # fmt: skip
    assert code == 0, err
    assert "5 slides" in out
    rows = read_tsv(tmp_path / "predictions.tsv")
    assert [r["status"] for r in rows] == ["ok", "flagged", "failed", "not run", "not run"]
    assert rows[1]["qc_flags"] == "attention_off_tissue"
    assert rows[2]["error"] == "f.h5: no patches (N = 0)" and rows[2]["prob_benign"] == ""
    probs = []
    for r in rows[:2]:
        data = json.loads((results / "P1" / r["slide"] / "slide.json").read_text())
        got = [float(r["prob_benign"]), float(r["prob_tumour"])]
        assert got == pytest.approx(data["probabilities"], rel=1e-5)
        assert r["predicted_class"] == data["predicted_class"]
        assert int(r["n_patches"]) == data["n_patches"]
        probs.append(data["probabilities"])
    patients = read_tsv(tmp_path / "patients.tsv")
    assert [p["patient"] for p in patients] == ["P1", "P2", "P3"]
    mean = np.mean(probs, axis=0)
    p1 = patients[0]
    assert [float(p1["prob_benign"]), float(p1["prob_tumour"])] == pytest.approx(mean, rel=1e-5)
    assert p1["predicted_class"] == ["benign", "tumour"][int(np.argmax(mean))]
    assert (p1["slides_predicted"], p1["slides_total"]) == ("2", "2")
    assert (patients[1]["prob_benign"], patients[1]["slides_predicted"]) == ("", "0")
