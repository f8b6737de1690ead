"""The cohort's ``features.tsv``: every slide of the sheet with N, D, encoder and status.

Read from the files on disk, as :mod:`wsiproc.cohort` reads the other stages: a slide's
features are ``ok`` when ``features.json`` (written after ``features.h5``) is there and its log
holds no later error, ``failed`` when its log says so (the last ``error:`` line is given),
``not run`` otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..cohort import FAILED, NOT_RUN, OK, STOPPED, Layout, last_error, read_sheet

RULE = "features"
H5 = "features.h5"
MARKER = "features.json"
COLUMNS = (
    "patient",
    "slide",
    "status",
    "N",
    "D",
    "encoder",
    "precision",
    "device",
    "patches_per_s",
    "runtime_s",
    "features_h5",
    "error",
    "log",
)


@dataclass(frozen=True)
class FeaturesStatus:
    """One slide's features: sizes and throughput when ``ok``, error and log when ``failed``."""

    patient: str
    slide: str
    status: str
    n: int | None = None
    d: int | None = None
    encoder: str | None = None
    precision: str | None = None
    device: str | None = None
    patches_per_s: float | None = None
    runtime_s: float | None = None
    h5: Path | None = None
    error: str | None = None
    log: Path | None = None

    def row(self) -> list[str]:
        """The TSV fields, ``NA`` where a value does not apply."""
        values = (
            self.patient,
            self.slide,
            self.status,
            self.n,
            self.d,
            self.encoder,
            self.precision,
            self.device,
            self.patches_per_s,
            self.runtime_s,
            self.h5,
            self.error,
            self.log,
        )
        return ["NA" if v is None else str(v) for v in values]


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def features_status(layout: Layout, patient: str, slide: str) -> FeaturesStatus:
    """The status of one slide's features (rules in the module doc)."""
    import h5py

    marker = layout.slide_file(patient, slide, MARKER)
    h5 = layout.slide_file(patient, slide, H5)
    log = layout.slide_log(RULE, patient, slide)
    marker_t, log_t = _mtime(marker), _mtime(log)
    error = last_error(log) if log_t is not None else None
    if log_t is not None and (marker_t is None or (error is not None and marker_t < log_t)):
        return FeaturesStatus(patient, slide, FAILED, error=error or STOPPED, log=log)
    if marker_t is None or _mtime(h5) is None:
        return FeaturesStatus(patient, slide, NOT_RUN)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        with h5py.File(h5, "r") as fh:
            n, d = (int(s) for s in fh["features"].shape)
            encoder = str(fh["features"].attrs.get("encoder", "NA"))
    except (OSError, ValueError, KeyError) as exc:
        problem = f"{h5}: unreadable features file: {exc}"
        return FeaturesStatus(patient, slide, FAILED, error=problem, log=log)
    return FeaturesStatus(
        patient,
        slide,
        OK,
        n=n,
        d=d,
        encoder=encoder,
        precision=record.get("precision"),
        device=record.get("device"),
        patches_per_s=record.get("windows_per_s"),
        runtime_s=record.get("elapsed_s"),
        h5=h5,
    )


def write_features_table(sheet: str, layout: Layout, out: str) -> list[FeaturesStatus]:
    """Write ``features.tsv`` for every slide of ``sheet`` (in sheet order); return the rows."""
    rows = [features_status(layout, patient, slide) for patient, slide in read_sheet(sheet)]
    with atomic_write(out) as fh:
        fh.write("\t".join(COLUMNS) + "\n")
        for status in rows:
            fh.write("\t".join(status.row()) + "\n")
    return rows
