"""Crash-safe record of finished chunks: an append-only spool plus an fsynced index.

A chunk counts as done only once its records are fsynced in ``spool.bin`` *and* its index line
is fsynced in ``done.log``; anything after the last complete line is discarded on reopen, so a
SIGKILL or power loss at any instant loses at most the chunks in flight. ``run.json`` holds the
run's fingerprint: a changed command (slide, parameters, model) starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write, describe_os_error
from ..errors import OutputError
from ..record import MAX_REGIONS, ReadErrors
from .messages import WindowBatch

RUN_FILE = "run.json"
SPOOL_FILE = "spool.bin"
INDEX_FILE = "done.log"
FAILURES_FILE = "read_errors.jsonl"


class Checkpoint:
    """The partial-results directory of one ``infer`` output.

    Written by one process at a time (the writer); read by the engine once the writer exited.
    ``width`` is the number of float32 output values per window.
    """

    def __init__(self, directory: Path, fingerprint: dict[str, Any], width: int) -> None:
        self.directory = Path(directory)
        self.width = width
        self.fingerprint = fingerprint
        self.done: dict[int, tuple[int, int]] = {}
        try:
            self._load_or_reset()
        except OSError as exc:
            raise OutputError(str(self.directory), describe_os_error(exc)) from exc

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.directory)!r}, done={len(self.done)})"

    def _load_or_reset(self) -> None:
        """Resume if the fingerprint matches, else wipe and start a new directory."""
        run = self.directory / RUN_FILE
        if run.exists():
            try:
                same = json.loads(run.read_text()) == self.fingerprint
            except ValueError:
                same = False
            if same:
                self._recover()
                return
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        (self.directory / SPOOL_FILE).touch()
        (self.directory / INDEX_FILE).touch()
        with atomic_write(run) as fh:
            json.dump(self.fingerprint, fh, sort_keys=True, indent=1)

    def reload(self) -> None:
        """Re-read the index (after another process appended to it)."""
        self.done = {}
        self._recover()

    def record_bytes(self, n: int) -> int:
        """Bytes of a chunk record with ``n`` windows."""
        return n * (8 + 4 * self.width)

    def _recover(self) -> None:
        """Read the index; drop a torn last line and any spool bytes past the last record."""
        spool = self.directory / SPOOL_FILE
        index = self.directory / INDEX_FILE
        spool.touch()
        index.touch()
        spool_size = spool.stat().st_size
        good_bytes = 0
        end = 0
        with open(index, "rb") as fh:
            data = fh.read()
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            try:
                chunk, offset, n = (int(v) for v in line.split())
            except ValueError:
                break
            size = self.record_bytes(n)
            if offset != end or offset + size > spool_size:
                break
            self.done[chunk] = (offset, n)
            end = offset + size
            good_bytes += len(line) + 1
        with open(index, "r+b") as fh:
            fh.truncate(good_bytes)
        with open(spool, "r+b") as fh:
            fh.truncate(end)

    def append(self, chunk: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Durably add one finished chunk (spool first, then its index line)."""
        spool = self.directory / SPOOL_FILE
        n = len(rows)
        payload = (
            np.asarray(rows, dtype="<i4").tobytes()
            + np.asarray(cols, dtype="<i4").tobytes()
            + np.asarray(values, dtype="<f4").reshape(n, self.width).tobytes()
        )
        try:
            with open(spool, "ab") as fh:
                offset = fh.tell()
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            with open(self.directory / INDEX_FILE, "ab") as fh:
                fh.write(f"{chunk} {offset} {n}\n".encode())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(str(spool), describe_os_error(exc)) from exc
        self.done[chunk] = (offset, n)

    def read(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, cols and (n, width) values of a finished chunk."""
        offset, n = self.done[chunk]
        with open(self.directory / SPOOL_FILE, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(self.record_bytes(n))
        rows = np.frombuffer(raw, dtype="<i4", count=n)
        cols = np.frombuffer(raw, dtype="<i4", count=n, offset=4 * n)
        values = np.frombuffer(raw, dtype="<f4", offset=8 * n).reshape(n, self.width)
        return rows, cols, values

    def add_read_failures(self, batch: WindowBatch, n_windows: int) -> None:
        """Record a batch's unreadable windows before its values reach the writer.

        One fsynced line per batch, keyed by (group, batch): a group redone after a kill
        overwrites its lines instead of counting twice; lines of groups never committed are
        ignored by :meth:`read_failures`.
        """
        line = {
            "group": batch.chunk_index,
            "batch": batch.batch_index,
            "windows": n_windows,
            "regions": [asdict(f) for f in batch.failures],
        }
        path = self.directory / FAILURES_FILE
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(str(path), describe_os_error(exc)) from exc

    def read_failures(self) -> ReadErrors:
        """Unreadable windows and regions of the committed groups."""
        path = self.directory / FAILURES_FILE
        by_batch: dict[tuple[int, int], dict[str, Any]] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return ReadErrors()
        for text in lines:
            try:
                line = json.loads(text)
                key = (int(line["group"]), int(line["batch"]))
            except (ValueError, KeyError, TypeError):
                continue  # torn by a kill
            if key[0] in self.done:
                by_batch[key] = line
        windows = sum(int(line["windows"]) for line in by_batch.values())
        regions = [r for key in sorted(by_batch) for r in by_batch[key]["regions"]]
        return ReadErrors(windows, tuple(regions[:MAX_REGIONS]))

    def remove(self) -> None:
        """Delete the directory once the final output is in place."""
        shutil.rmtree(self.directory, ignore_errors=True)
