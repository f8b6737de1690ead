"""Which batch each slide of the sheet belongs to (``features.slides_per_job`` and
``slide_model.slides_per_job`` > 1).

Batches are consecutive in sheet order. A patient's consecutive slides stay in one batch when
they fit: a patient whose slides do not fit in the room left in the current batch starts the
next one, and a patient with more than K slides fills whole batches. Each slide's batch depends
only on the rows up to the end of its patient's run, so rows appended at the end of the sheet
leave every earlier batch as it was (only when the appended rows continue the sheet's last
patient can that patient move to a new batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from ..errors import ConfigError


def batch_name(index: int) -> str:
    """The ``{batch}`` wildcard of the batch with this 1-based index: ``b1``, ``b2``, ..."""
    return f"b{index}"


def assign_batches(patients: Sequence[str], k: int) -> list[int]:
    """The 1-based batch index of each row, given the rows' patients in sheet order.

    Examples
    --------
    >>> assign_batches(["A", "A", "B", "C", "C", "C"], 3)
    [1, 1, 1, 2, 2, 2]
    >>> assign_batches(["A", "B", "B", "C"], 2)
    [1, 2, 2, 3]
    >>> assign_batches(["A", "A", "A", "A", "A", "B"], 2)
    [1, 1, 2, 2, 3, 3]
    >>> assign_batches(["A", "B", "B", "B"], 2)
    [1, 2, 2, 3]
    """
    if k < 1:
        raise ConfigError("slides_per_job", f"must be >= 1, got {k}")
    out: list[int] = []
    batch, used = 0, k  # no open batch yet: "full"
    for _, run in groupby(patients):
        n = len(list(run))
        if used + n > k:  # not in the room left: the patient starts a batch
            batch, used = batch + 1, 0
        for _ in range(n):
            if used == k:
                batch, used = batch + 1, 0
            out.append(batch)
            used += 1
    return out


def batch_members(patients: Sequence[str], k: int) -> dict[str, list[int]]:
    """``{batch name: row indices}`` in sheet order (the workflow's lookup per batch)."""
    members: dict[str, list[int]] = {}
    for row, index in enumerate(assign_batches(patients, k)):
        members.setdefault(batch_name(index), []).append(row)
    return members
