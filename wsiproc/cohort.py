"""The status of every slide of a run, read from the files the workflow leaves on disk.

Stateless on purpose: nothing records a run's progress but its outputs and logs, so the same
answer comes after a success, after ``--keep-going`` failures, after a crash or kill, and when a
user runs ``wsiproc status`` by hand. Each slide is ``ok``, ``flagged``, ``failed`` (with the
stage, its one-line error and its log) or ``not run``; each patient has its CSV or the reason
why not.

How a stage's result is read, given what Snakemake does to the files of a job:

* before a job runs, Snakemake deletes its outputs and its log (``Job.prepare`` ->
  ``remove_existing_output``), and after a failure it deletes the outputs again; wsiproc writes
  outputs atomically. So a stage's *marker* output exists only if the last job of the stage
  succeeded, and the log holds only the last job's messages;
* a stage **failed** when its log exists and its marker is missing (the last job failed, was
  killed or is still running), or when the log holds an ``error:`` line and the marker is older
  than the log. A log without an ``error:`` line beside an existing marker is a success, even
  when the log was touched after the marker by trailing output;
* the later stages of a failed one keep their files from earlier runs, so stages are checked in
  chain order and the first failed one is the slide's failure;
* a slide is ``ok`` or ``flagged`` only when every marker exists and none is older than the
  marker of the stage it was made from (else its ``qc.json`` is stale: ``not run``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputTableError

OK = "ok"
FLAGGED = "flagged"
FAILED = "failed"
NOT_RUN = "not run"

STOPPED = "stopped without an error message (killed or interrupted?)"
"""The error of a failed stage whose log has no ``error:`` line."""

MAX_LISTED_IDS = 20
"""Failed slide ids named in the summary line; the rest are counted."""


@dataclass(frozen=True)
class Stage:
    """One per-slide rule of the workflow: its name, its marker output and the stage before it."""

    rule: str
    marker: str
    after: tuple[str, ...] = ()


STAGES = (
    Stage("select_level", "level.json"),
    Stage("infer", "windows.json", ("select_level",)),
    Stage("heatmap", "heatmap_rgb.tif", ("infer",)),
    Stage("qc", "qc.json", ("infer",)),
)
"""The per-slide chain in workflow order; each marker is the last output its rule writes."""

FEATURES_STAGE = Stage("features", "features.json", ("select_level",))
SLIDE_MODEL_STAGES = (
    Stage("slide_predict", "slide.json", ("features",)),
    Stage("attention_heatmap", "attention.png", ("slide_predict",)),
)
"""The optional stages (config ``features.enabled``, ``slide_model.enabled``); qc reads their
``features.json`` and ``slide.json`` when they run, so they come before it."""


def stages(*, features: bool = False, slide_model: bool = False) -> tuple[Stage, ...]:
    """The chain of a run: :data:`STAGES` with the enabled optional stages before ``qc``
    (a slide model needs features, so it brings them).

    Examples
    --------
    >>> [s.rule for s in stages(slide_model=True)][3:]
    ['features', 'slide_predict', 'attention_heatmap', 'qc']
    """
    if not (features or slide_model):
        return STAGES
    extra = (FEATURES_STAGE, *(SLIDE_MODEL_STAGES if slide_model else ()))
    qc = STAGES[-1]
    qc = Stage(qc.rule, qc.marker, (*qc.after, "slide_predict" if slide_model else "features"))
    return (*STAGES[:-1], *extra, qc)


@dataclass(frozen=True)
class Layout:
    """Where the workflow puts each file (workflow/rules/*.smk); the only copy of that layout."""

    results: Path
    logs: Path

    def slide_file(self, patient: str, slide: str, name: str) -> Path:
        """``{results}/{patient}/{slide}/{name}``."""
        return self.results / patient / slide / name

    def slide_log(self, rule: str, patient: str, slide: str) -> Path:
        """``{logs}/{rule}/{patient}/{slide}.log``."""
        return self.logs / rule / patient / f"{slide}.log"

    def patient_csv(self, patient: str) -> Path:
        """``{results}/{patient}/{patient}.csv``."""
        return self.results / patient / f"{patient}.csv"

    def patient_log(self, patient: str) -> Path:
        """``{logs}/patient_csv/{patient}.log``."""
        return self.logs / "patient_csv" / f"{patient}.log"

    @property
    def report_html(self) -> Path:
        """``{results}/report.html``."""
        return self.results / "report.html"

    @property
    def summary_tsv(self) -> Path:
        """``{results}/summary.tsv``."""
        return self.results / "summary.tsv"


@dataclass(frozen=True)
class SlideStatus:
    """One slide's status; ``stage``, ``error`` and ``log`` are set when it failed."""

    patient: str
    slide: str
    status: str
    stage: str | None = None
    error: str | None = None
    log: Path | None = None
    qc_json: Path | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatientStatus:
    """One patient: ``csv`` when its patient CSV is present and current, else ``reason``."""

    patient: str
    slides: tuple[str, ...]
    status: str
    csv: Path | None = None
    reason: str | None = None
    stale_csv: Path | None = None


@dataclass(frozen=True)
class CohortStatus:
    """Every slide of the sheet (in sheet order) and every patient, with the run's counts."""

    layout: Layout
    slides: tuple[SlideStatus, ...]
    patients: tuple[PatientStatus, ...]
    features: bool = False
    slide_model: bool = False

    def count(self, status: str) -> int:
        """Number of slides with ``status``."""
        return sum(s.status == status for s in self.slides)

    @property
    def failed(self) -> list[SlideStatus]:
        """The failed slides, in sheet order."""
        return [s for s in self.slides if s.status == FAILED]

    def counts_text(self) -> str:
        """``N ok, M flagged[, L not run], K failed[: ids]``: the run in one line."""
        parts = [f"{self.count(OK)} ok", f"{self.count(FLAGGED)} flagged"]
        if self.count(NOT_RUN):
            parts.append(f"{self.count(NOT_RUN)} not run")
        text = ", ".join([*parts, f"{self.count(FAILED)} failed"])
        ids = [s.slide for s in self.failed]
        if ids:
            more = len(ids) - MAX_LISTED_IDS
            suffix = f" (+{more} more)" if more > 0 else ""
            text += ": " + ", ".join(ids[:MAX_LISTED_IDS]) + suffix
        return text

    def summary_lines(self, report: str | os.PathLike[str] | None = None) -> list[str]:
        """The terminal lines of a run: the counts, then the report's path if one is given."""
        lines = [f"wsiproc: {self.counts_text()}"]
        if report is not None:
            lines.append(f"wsiproc: report: {os.path.abspath(report)}")
        return lines


def read_sheet(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(patient, slide) of every row of a sample sheet, in order; other columns are ignored."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            missing = {"patient", "slide"} - set(reader.fieldnames or ())
            if missing:
                raise InputTableError(str(path), f"no column {', '.join(sorted(missing))}")
            rows = [(row["patient"], row["slide"]) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputTableError(str(path), f"cannot read sample sheet: {exc}") from exc
    if not rows:
        raise InputTableError(str(path), "the sample sheet lists no slides")
    return rows


def _mtime(path: Path) -> int | None:
    """Modification time in ns, or None if the file does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def last_error(log: Path) -> str | None:
    """The last line of ``log`` starting with ``error:``, without that prefix; None if none."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    return errors[-1][len("error:") :].strip() if errors else None


def _failure(marker_mtime: int | None, log: Path) -> str | None:
    """The error of a stage whose log records a failure (see the module doc), else None."""
    log_mtime = _mtime(log)
    if log_mtime is None:
        return None
    error = last_error(log)
    if marker_mtime is None:
        return error or STOPPED
    if error is not None and marker_mtime < log_mtime:
        return error
    return None


def _read_flags(qc_json: Path) -> tuple[str, ...] | str:
    """The ``flags`` of a ``qc.json``, or the reason it cannot be read."""
    try:
        record = json.loads(qc_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{qc_json}: unreadable qc.json: {exc}"
    flags = record.get("flags") if isinstance(record, dict) else None
    if not isinstance(flags, list):
        return f"{qc_json}: not a qc.json (no list of flags)"
    return tuple(str(f) for f in flags)


def slide_status(
    layout: Layout, patient: str, slide: str, chain: Sequence[Stage] = STAGES
) -> SlideStatus:
    """The status of one slide from the markers and logs of ``chain`` (rules in the module
    doc)."""
    mtimes = {}
    for stage in chain:
        mtimes[stage.rule] = _mtime(layout.slide_file(patient, slide, stage.marker))
        log = layout.slide_log(stage.rule, patient, slide)
        error = _failure(mtimes[stage.rule], log)
        if error is not None:
            return SlideStatus(patient, slide, FAILED, stage.rule, error, log)
    for stage in chain:
        mtime = mtimes[stage.rule]
        before = [mtimes[a] for a in stage.after if mtimes[a] is not None]
        if mtime is None or (before and mtime < max(before)):
            return SlideStatus(patient, slide, NOT_RUN)
    qc_json = layout.slide_file(patient, slide, "qc.json")
    flags = _read_flags(qc_json)
    if isinstance(flags, str):
        log = layout.slide_log("qc", patient, slide)
        return SlideStatus(patient, slide, FAILED, "qc", flags, log)
    return SlideStatus(patient, slide, FLAGGED if flags else OK, qc_json=qc_json, flags=flags)


def _slides_phrase(ids: Sequence[str], what: str) -> str:
    """``slide A failed`` / ``slides A, B failed``."""
    return f"slide{'s' if len(ids) > 1 else ''} {', '.join(ids)} {what}"


def patient_status(layout: Layout, patient: str, slides: Sequence[SlideStatus]) -> PatientStatus:
    """Whether the patient's CSV is present and current, and if not, why not.

    A CSV left from an earlier run is never deleted, only reported as stale.
    """
    ids = tuple(s.slide for s in slides)
    csv_path = layout.patient_csv(patient)
    csv_mtime = _mtime(csv_path)
    failed = [s.slide for s in slides if s.status == FAILED]
    not_run = [s.slide for s in slides if s.status == NOT_RUN]
    if failed or not_run:
        reasons = [_slides_phrase(failed, FAILED)] if failed else []
        reasons += [_slides_phrase(not_run, NOT_RUN)] if not_run else []
        stale = None if csv_mtime is None else csv_path
        if stale is not None:
            reasons.append(f"{csv_path} is stale (from an earlier run)")
        status = FAILED if failed else NOT_RUN
        return PatientStatus(patient, ids, status, reason="; ".join(reasons), stale_csv=stale)
    if csv_mtime is None:
        log = layout.patient_log(patient)
        error = _failure(None, log)
        if error is not None:
            return PatientStatus(
                patient, ids, FAILED, reason=f"patient_csv failed: {error} ({log})"
            )
        return PatientStatus(patient, ids, NOT_RUN, reason="patient_csv not run")
    newer = [
        s.slide
        for s in slides
        if (_mtime(layout.slide_file(patient, s.slide, "windows.csv")) or 0) > csv_mtime
    ]
    if newer:
        reason = f"{csv_path} is stale (older than windows.csv of {', '.join(newer)})"
        return PatientStatus(patient, ids, NOT_RUN, reason=reason, stale_csv=csv_path)
    return PatientStatus(patient, ids, OK, csv=csv_path)


def cohort_status(
    sheet: str | os.PathLike[str],
    results: str | os.PathLike[str],
    logs: str | os.PathLike[str],
    *,
    features: bool = False,
    slide_model: bool = False,
) -> CohortStatus:
    """The status of every slide and patient of ``sheet`` under ``results`` and ``logs``;
    ``features`` and ``slide_model`` add those stages to each slide's chain."""
    layout = Layout(Path(results), Path(logs))
    chain = stages(features=features, slide_model=slide_model)
    slides = tuple(
        slide_status(layout, patient, slide, chain) for patient, slide in read_sheet(sheet)
    )
    by_patient: dict[str, list[SlideStatus]] = {}
    for status in slides:
        by_patient.setdefault(status.patient, []).append(status)
    patients = tuple(patient_status(layout, p, group) for p, group in by_patient.items())
    return CohortStatus(layout, slides, patients, features or slide_model, slide_model)
