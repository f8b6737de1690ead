"""The slides of a workflow run, as the viewer lists them: ``summary.tsv`` plus each slide's files.

``summary.tsv`` is the run's own record of every slide of the sheet (ok, flagged, failed, not
run), rewritten after every run by the ``report`` rule or the ``onerror`` handler, so the
viewer needs nothing but the results folder. It is read again whenever it changes, so a
viewer left open across a rerun lists the new state. Where each slide's files are comes from
:class:`wsiproc.cohort.Layout`; the slide file itself is the one its ``level.json`` (or
``windows.json``) names, and no other file is ever opened as a slide.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..cohort import Layout
from ..errors import InputTableError

REQUIRED_COLUMNS = ("patient", "slide_id", "status")
NA = "NA"


@dataclass(frozen=True)
class SlideEntry:
    """One slide of the run: who, its status and QC flags (from ``summary.tsv``), its folder.

    ``flags`` is empty for an OK slide and for one without QC; ``error`` and ``failed_stage``
    are set for a failed slide.
    """

    patient: str
    slide_id: str
    status: str
    flags: tuple[str, ...]
    folder: Path
    failed_stage: str | None = None
    error: str | None = None

    def file(self, name: str) -> Path:
        """A file of this slide's results folder (which may not exist)."""
        return self.folder / name

    def slide_path(self) -> Path | None:
        """The slide file its ``level.json`` (else ``windows.json``) names, if that exists.

        A relative path (a sheet given relative to the workflow's working folder) is tried
        from the current folder, then from the results folder's parent.
        """
        for name, key in (("level.json", "path"), ("windows.json", "slide")):
            try:
                recorded = json.loads(self.file(name).read_text(encoding="utf-8")).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if not isinstance(recorded, str) or not recorded:
                continue
            path = Path(recorded)
            candidates = [path] if path.is_absolute() else [path, self.folder.parents[2] / path]
            for candidate in candidates:
                if candidate.is_file():
                    return candidate
        return None


class Catalog:
    """The slides of the run under ``results``, re-read from ``summary.tsv`` when it changes.

    Thread-safe.

    Raises
    ------
    InputTableError
        From the constructor: ``results`` is not a folder, or has no readable ``summary.tsv``.
    """

    def __init__(self, results: str | os.PathLike[str]) -> None:
        self.results = Path(results).resolve()
        # The viewer reads no logs; the layout is only where each slide's files are.
        self.layout = Layout(self.results, self.results)
        if not self.results.is_dir():
            raise InputTableError(str(results), "no such folder (give the workflow's outdir)")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, SlideEntry] = {}
        self._load()

    def __repr__(self) -> str:
        return f"Catalog({str(self.results)!r}, {len(self._entries)} slides)"

    @property
    def summary_tsv(self) -> Path:
        """The run's ``summary.tsv``."""
        return self.layout.summary_tsv

    def entries(self) -> list[SlideEntry]:
        """Every slide, sorted by patient then slide id (as ``summary.tsv`` is)."""
        self._refresh()
        with self._lock:
            return list(self._entries.values())

    def get(self, slide_id: str) -> SlideEntry | None:
        """The slide with this id, or None if the run has none."""
        self._refresh()
        with self._lock:
            return self._entries.get(slide_id)

    def _refresh(self) -> None:
        """Re-read ``summary.tsv`` if it changed; keep the last good listing if it vanished."""
        try:
            stat = self.summary_tsv.stat()
        except OSError:
            return
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            try:
                self._load()
            except InputTableError:
                pass

    def _load(self) -> None:
        """Read ``summary.tsv`` into entries."""
        path = self.summary_tsv
        try:
            stat = path.stat()
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter="\t")
                missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
                rows = list(reader)
        except FileNotFoundError as exc:
            problem = "no such file: not the outdir of a workflow run (it writes summary.tsv)"
            raise InputTableError(str(path), problem) from exc
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputTableError(str(path), f"cannot read: {exc}") from exc
        if missing:
            raise InputTableError(str(path), f"not a wsiproc summary (no column {missing[0]})")
        entries = {}
        for row in rows:
            if _is_name(row["patient"]) and _is_name(row["slide_id"]):
                entry = _entry(row, self.layout)
                entries[entry.slide_id] = entry
        with self._lock:
            self._entries = entries
            self._stamp = (stat.st_mtime_ns, stat.st_size)


def _is_name(text: str | None) -> bool:
    """True for a plain folder name: no separator, not ``.`` or ``..`` (so no row of a tampered
    ``summary.tsv`` can point the viewer outside the results folder).

    Examples
    --------
    >>> _is_name("P1_A"), _is_name(".."), _is_name("a/b"), _is_name("")
    (True, False, False, False)
    """
    return bool(text) and text not in (".", "..") and not any(c in text for c in "/\\\0")


def _entry(row: dict[str, str], layout: Layout) -> SlideEntry:
    """A :class:`SlideEntry` from one ``summary.tsv`` row."""

    def value(key: str) -> str | None:
        text = row.get(key)
        return None if text in (None, "", NA) else text

    flags = value("flags")
    return SlideEntry(
        patient=row["patient"],
        slide_id=row["slide_id"],
        status=row["status"],
        flags=() if flags in (None, "OK") else tuple(flags.split(",")),
        folder=layout.slide_file(row["patient"], row["slide_id"], ""),
        failed_stage=value("failed_stage"),
        error=value("error"),
    )
