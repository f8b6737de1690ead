"""Run one stage's own CLI code for every slide of a batch, in this process, and record how
each slide went.

Each slide goes through exactly what ``wsiproc <stage> ARGS`` runs (its parser, its ``run``),
after the commands it needs first (its level selection: a slide that cannot even be opened
then fails inside the batch, not before it), its outputs sent to a staging directory by the
arguments the workflow gives; the model is loaded once (:mod:`.keep`). A slide's error is the
slide's: it is recorded (the same one line ``wsiproc <stage>`` would print) and the next slide
runs. A model that does not load fails the batch. The record (a TSV, written atomically last)
is the batch job's one output; :mod:`.finish` reads it per slide.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import InputTableError
from .keep import ModelLoadError, keeping_models

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"
COLUMNS = ("slide", "status", "seconds", "error")


@dataclass(frozen=True)
class Outcome:
    """One slide of a batch: ``ok``, ``failed`` (with its error line) or ``skipped`` (its
    input stage failed)."""

    slide: str
    status: str
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class Item:
    """One slide of a batch: ``pre`` are whole commands of other stages (``level SLIDE ...``)
    run first, ``args`` its own arguments of the batch's stage."""

    slide: str
    args: Sequence[str]
    pre: Sequence[Sequence[str]] = ()


def run_batch(
    stage: str,
    items: Sequence[Item],
    common: Sequence[str],
    record: str | Path,
    *,
    skip: Iterable[str] = (),
) -> list[Outcome]:
    """Run each item's ``pre`` commands, then ``wsiproc <stage> <item args> <common args>``,
    record the outcome of each slide in ``record`` and return them.

    Every command is parsed before the first slide runs: a malformed command is the
    workflow's error, not a slide's (argparse exits 2 then, nothing is written).

    Raises
    ------
    ModelLoadError
        The model did not load: no record is written and the batch job fails.
    """
    from ..cli import failure

    parsed = [
        (item.slide, [*map(_parse, item.pre), _parse([stage, *item.args, *common])])
        for item in items
    ]
    skip = set(skip)
    outcomes: list[Outcome] = []
    with keeping_models():
        for slide, commands in parsed:
            started = time.monotonic()
            if slide in skip:
                outcomes.append(Outcome(slide, SKIPPED, 0.0, "its input stage failed"))
                _say(f"{slide}: skipped, its input stage failed")
                continue
            try:
                for args in commands:
                    args.run(args)
            except ModelLoadError:
                raise
            except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the slide's error
                line, code = failure(exc)
                if code == 130:
                    raise
                outcome = Outcome(slide, FAILED, _since(started), line)
                _say(f"{slide}: error: {line}")
            else:
                outcome = Outcome(slide, OK, _since(started))
                _say(f"{slide}: ok in {outcome.seconds:.1f} s")
            outcomes.append(outcome)
    write_record(record, outcomes)
    failed = sum(o.status != OK for o in outcomes)
    _say(f"{len(outcomes) - failed} of {len(outcomes)} slides ok; record {record}")
    return outcomes


def _parse(argv: Sequence[str]) -> Any:
    """``wsiproc ARGV``'s parsed arguments (the stage's own parser, as ``wsiproc`` builds it)."""
    from ..cli import build_parser

    return build_parser(argv[0].replace("-", "_")).parse_args(list(argv))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _say(text: str) -> None:
    """A progress line of the batch job's log."""
    print(f"batch: {text}", file=sys.stderr, flush=True)


def write_record(path: str | Path, outcomes: Sequence[Outcome]) -> None:
    """The batch record, atomically (its appearance is the batch job's success)."""
    with atomic_write(path) as fh:
        out = csv.writer(fh, delimiter="\t", lineterminator="\n")
        out.writerow(COLUMNS)
        for o in outcomes:
            out.writerow([o.slide, o.status, f"{o.seconds:.3f}", o.error])


def read_record(path: str | Path) -> dict[str, Outcome]:
    """``{slide: outcome}`` of a batch record.

    Raises
    ------
    InputTableError
        The record is missing or not a batch record.
    """
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc
    if not rows or tuple(rows[0]) != COLUMNS:
        raise InputTableError(str(path), f"not a batch record (header {', '.join(COLUMNS)})")
    outcomes = {}
    for row in rows[1:]:
        if len(row) != len(COLUMNS):
            raise InputTableError(str(path), f"row {row!r} has {len(row)} fields, not 4")
        outcomes[row[0]] = Outcome(row[0], row[1], float(row[2]), row[3])
    return outcomes


def failed_slides(records: Iterable[str | Path]) -> set[str]:
    """Slides that did not come out ``ok`` in any of these records."""
    return {
        slide
        for path in records
        for slide, outcome in read_record(path).items()
        if outcome.status != OK
    }
