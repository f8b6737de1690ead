"""What the cohort report's sortable, filtered, paged tables are made of: columns, rows, pages.

Apart from :mod:`.report` because it is presentation only. The markup is the ``sortable_table``
macro of ``wsiproc/templates/macros.html`` and the behaviour ``templates/static/sortable.js``,
inlined into the page; rows are plain HTML, so a 10,000-slide page reads as a table without its
script (or with scripts blocked), and the script only reorders and hides existing rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..cohort import FAILED

PAGE_ROWS = 500
"""Lines of a table shown at a time. Headless Chromium took about 8 s to lay out a 10,000-line
table of thumbnails, at every sort and filter; hidden lines cost nothing, so with pages of 500
a sort of 10,000 slides took under a second. Without scripts every line is shown."""

PAGE_CHOICES = (100, PAGE_ROWS, 2000)
"""Lines per page a reader can choose, besides all."""


@dataclass(frozen=True)
class Column:
    """A header cell: its text, how it sorts (``num``, ``text`` or None) and if filtered by."""

    title: str
    sort: str | None = "text"
    search: bool = False


@dataclass(frozen=True)
class SortableTable:
    """One table of the report: its id, columns, filter bar and rows.

    Each row has a ``status`` (the status filter matches it; ``failed`` rows are highlighted);
    the template writes a row's cells. ``statuses`` are the status filter's choices (no filter
    if empty); the text box searches the columns with ``search`` set.
    """

    id: str
    columns: Sequence[Column]
    rows: Sequence[Any]
    placeholder: str
    statuses: Sequence[str] = ()
    page_rows: int = PAGE_ROWS
    page_choices: Sequence[int] = PAGE_CHOICES
    failed: str = FAILED
