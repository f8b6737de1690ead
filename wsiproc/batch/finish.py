"""One slide of a batch into place: its staged files become its final outputs, or its
recorded error becomes this step's failure.

The workflow's per-slide rule (``features``, ``slide_predict``) keeps today's outputs, so every
later rule is unchanged; it runs this after the batch job. Each final file is a hard link to
the staged one, put in place with ``os.replace`` (atomic) and then touched: the staged copy
stays (no extra space) so that a later batch stage can read it before this step has run, and
the fresh mtime keeps Snakemake from seeing the outputs as older than the batch record.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..atomic import describe_os_error, fsync_dir
from ..errors import InputTableError, OutputError, WsiprocError
from .runner import OK, read_record


class SlideFailedError(WsiprocError):
    """The slide failed inside its batch; the message is its recorded error line."""


def finish_slide(
    record: str | Path, slide: str, staged: str | Path, final: str | Path, outputs: Sequence[str]
) -> None:
    """Put ``outputs`` (paths under ``final``) in place from the same paths under ``staged``,
    in the given order (the completion marker last), if the record says ``slide`` is ok.

    Raises
    ------
    SlideFailedError
        The record holds the slide's error.
    InputTableError
        The record has no row for the slide.
    OutputError
        A staged file is missing or cannot be linked into place.
    """
    outcome = read_record(record).get(slide)
    if outcome is None:
        raise InputTableError(str(record), f"no row for slide {slide}")
    if outcome.status != OK:
        raise SlideFailedError(outcome.error or outcome.status)
    staged, final = Path(staged), Path(final)
    for out in map(Path, outputs):
        source = staged / out.relative_to(final)
        if not source.is_file():
            raise OutputError(str(source), f"staged file missing (batch record {record} says ok)")
        _link_into_place(source, out)


def _link_into_place(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content (a hard link, else a copy), atomically, with
    the current time as its mtime."""
    tmp = target.with_name(f".{target.name}.link-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        os.utime(target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(str(target), describe_os_error(exc)) from exc
