"""Cohort tables of slide-model results: ``predictions.tsv`` per slide, one row per patient.

Stateless like :mod:`wsiproc.cohort`: a slide's status is read from its ``slide.json`` (the
``slide_predict`` rule's marker) and the rule's log, so the tables are right after a success,
after ``--keep-going`` failures, and when run by hand.

Patient aggregate: the mean over the patient's predicted slides of each class probability
(classification) or output value (regression); the predicted class is the argmax of those
means. Failed or not-run slides do not count; a patient without a predicted slide has empty
values.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..cohort import FAILED, FLAGGED, NOT_RUN, OK, Layout, _failure
from ..errors import InputTableError

RULE = "slide_predict"
MARKER = "slide.json"


@dataclass(frozen=True)
class SlideResult:
    """One slide's row: status, and the prediction when there is one."""

    patient: str
    slide: str
    status: str
    error: str = ""
    values: tuple[float, ...] = ()
    predicted_class: str = ""
    flags: tuple[str, ...] = ()
    n_patches: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


def slide_result(layout: Layout, patient: str, slide: str) -> SlideResult:
    """Read one slide's ``slide.json`` and ``slide_predict`` log (see the module doc)."""
    marker = layout.slide_file(patient, slide, MARKER)
    try:
        mtime: int | None = marker.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = None
    error = _failure(mtime, layout.slide_log(RULE, patient, slide))
    if error is not None:
        return SlideResult(patient, slide, FAILED, error=error)
    if mtime is None:
        return SlideResult(patient, slide, NOT_RUN)
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        values = data["probabilities"] if data["task"] == "classification" else data["logits"]
        result = SlideResult(
            patient,
            slide,
            FLAGGED if data.get("qc_flags") else OK,
            values=tuple(float(v) for v in values or ()),
            predicted_class=data.get("predicted_class") or "",
            flags=tuple(data.get("qc_flags") or ()),
            n_patches=int(data["n_patches"]),
            data=data,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return SlideResult(patient, slide, FAILED, error=f"{marker}: unreadable slide.json: {exc}")
    return result


def value_columns(results: Sequence[SlideResult]) -> tuple[list[str], list[str]]:
    """(TSV column names, class names) from the first prediction: ``prob_<class>`` or
    ``value_<name>``.

    Raises
    ------
    InputTableError
        Two slides were predicted by models with different classes.
    """
    predicted = [r for r in results if r.data]
    if not predicted:
        return [], []
    first = predicted[0].data
    for r in predicted[1:]:
        if r.data["classes"] != first["classes"] or r.data["task"] != first["task"]:
            where = f"{r.patient}/{r.slide}/{MARKER}"
            raise InputTableError(where, "classes differ from other slides' (another model?)")
    prefix = "prob_" if first["task"] == "classification" else "value_"
    return [prefix + c for c in first["classes"]], list(first["classes"])


def write_tables(
    results: Sequence[SlideResult], predictions: str | Path, patients: str | Path
) -> None:
    """Write ``predictions.tsv`` (one row per slide) and the per-patient TSV, atomically."""
    columns, classes = value_columns(results)
    fmt = "{:.6g}".format
    with atomic_write(predictions) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["patient", "slide", *columns, "predicted_class", "n_patches", "status"]
                   + ["qc_flags", "error"])  # fmt: skip
        for r in results:
            vals = [fmt(v) for v in r.values] if r.values else [""] * len(columns)
            n = "" if r.n_patches is None else r.n_patches
            w.writerow([r.patient, r.slide, *vals, r.predicted_class, n, r.status,
                        ",".join(r.flags), r.error])  # fmt: skip
    by_patient: dict[str, list[SlideResult]] = {}
    for r in results:
        by_patient.setdefault(r.patient, []).append(r)
    with atomic_write(patients) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["patient", *columns, "predicted_class", "slides_predicted", "slides_total"])
        for patient, rows in by_patient.items():
            done = [r.values for r in rows if r.values]
            means = (
                [math.fsum(v[i] for v in done) / len(done) for i in range(len(columns))]
                if done
                else []
            )
            predicted = ""
            if done and columns and columns[0].startswith("prob_"):
                predicted = classes[max(range(len(means)), key=means.__getitem__)]
            vals = [fmt(m) for m in means] if done else [""] * len(columns)
            w.writerow([patient, *vals, predicted, len(done), len(rows)])
