"""Sortable, filterable HTML tables for the cohort report, and the small inline script behind them.

Apart from :mod:`.report` because it is presentation only. The rows are rendered here as plain
HTML, so a 10,000-slide page reads as a table without its script (or with scripts blocked); the
script only reorders and hides existing rows. It is inline vanilla JavaScript with no network
access, so the page works from disk, from an archive and behind ``wsiproc view`` alike.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

PAGE_ROWS = 500
"""Lines of a table shown at a time. Headless Chromium took about 8 s to lay out a 10,000-line
table of thumbnails, at every sort and filter; hidden lines cost nothing, so with pages of 500
a sort of 10,000 slides took under a second. Without scripts every line is shown."""

PAGE_CHOICES = (100, PAGE_ROWS, 2000)
"""Lines per page a reader can choose, besides all."""

CSS = """
th[data-sort]{cursor:pointer;user-select:none;white-space:nowrap}
th[data-sort]::after{content:" \\2195";color:#aaa}
th[aria-sort=ascending]::after{content:" \\25B2";color:#222}
th[aria-sort=descending]::after{content:" \\25BC";color:#222}
.filters{margin:.5em 0;display:flex;gap:.6em;align-items:center;flex-wrap:wrap}
.filters[hidden]{display:none}
.filters input{min-width:18em}
.filter-count{color:#555;font-size:.9em}
img.thumb{display:block;max-width:160px;max-height:160px;height:auto}
"""
"""Sort arrows on clickable headers, the filter bar and the thumbnails' fixed box."""

NOSCRIPT = "<noscript><style>table.sortable tr[hidden]{display:table-row}</style></noscript>"
"""Shows the lines beyond the first page when scripts do not run."""

SCRIPT = """
(function () {
  "use strict";
  function pad(digits) { return ("000000000000000" + digits).slice(-Math.max(15, digits.length)); }
  function cell(row, col) {
    var c = row.firstElementChild;
    while (col-- > 0) c = c.nextElementSibling;
    return c;
  }
  function cellValue(row, col, numeric) {
    var text = cell(row, col).textContent.trim();
    if (text === "" || text === "\\u2013") return null;
    if (!numeric) return text.toLowerCase().replace(/\\d+/g, pad);
    var x = parseFloat(text);
    return isNaN(x) ? null : x;
  }
  function each(list, fn) { Array.prototype.forEach.call(list, fn); }
  function setUp(table) {
    var body = table.querySelector("tbody"), heads = table.querySelectorAll("thead th");
    var rows = Array.prototype.slice.call(body.children);
    var order = rows.map(function (row, i) { return i; });
    var statuses = rows.map(function (row) { return row.getAttribute("data-status"); });
    var searched = [];
    each(heads, function (th, col) { if (th.hasAttribute("data-search")) searched.push(col); });
    var keys = rows.map(function (row) {
      return searched.map(function (c) { return cell(row, c).textContent; })
        .join("\\n").toLowerCase();
    });
    var bar = document.querySelector('.filters[data-for="' + table.id + '"]');
    function part(name) { return bar ? bar.querySelector("." + name) : null; }
    var text = part("filter-text"), status = part("filter-status"), count = part("filter-count");
    var size = part("page-size"), prev = part("page-prev"), next = part("page-next");
    var page = 0;
    function render() {
      var q = text ? text.value.trim().toLowerCase() : "", s = status ? status.value : "";
      var matched = order.filter(function (i) {
        return (!q || keys[i].indexOf(q) >= 0) && (!s || statuses[i] === s);
      });
      var per = (size && +size.value) || matched.length || 1;
      var pages = Math.max(1, Math.ceil(matched.length / per));
      page = Math.min(page, pages - 1);
      var first = page * per, last = Math.min(first + per, matched.length);
      var shown = new Uint8Array(rows.length);
      for (var k = first; k < last; k++) shown[matched[k]] = 1;
      rows.forEach(function (row, i) {
        var hide = !shown[i];
        if (row.hidden !== hide) row.hidden = hide;
      });
      if (count) {
        count.textContent = pages === 1 ? matched.length + " of " + rows.length + " shown"
          : (first + 1) + "\\u2013" + last + " of " + matched.length +
            (matched.length < rows.length ? " matching (" + rows.length + " in all)" : "");
      }
      if (prev) { prev.hidden = pages === 1; prev.disabled = page === 0; }
      if (next) { next.hidden = pages === 1; next.disabled = page >= pages - 1; }
    }
    function sortBy(th, col) {
      var numeric = th.getAttribute("data-sort") === "num";
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      each(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      var values = rows.map(function (row) { return cellValue(row, col, numeric); });
      order.sort(function (a, b) {
        var va = values[a], vb = values[b];
        if (va === null || vb === null) {
          if (va === vb) return a - b;
          return va === null ? 1 : -1;
        }
        var d = numeric ? va - vb : (va < vb ? -1 : va > vb ? 1 : 0);
        return d ? dir * d : a - b;
      });
      var fragment = document.createDocumentFragment();
      body.textContent = "";
      order.forEach(function (i) { fragment.appendChild(rows[i]); });
      body.appendChild(fragment);
      page = 0;
      render();
    }
    each(heads, function (th, col) {
      if (!th.hasAttribute("data-sort")) return;
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th, col); }
      });
    });
    function restart() { page = 0; render(); }
    if (text) text.addEventListener("input", restart);
    if (status) status.addEventListener("change", restart);
    if (size) size.addEventListener("change", restart);
    if (prev) prev.addEventListener("click", function () { page -= 1; render(); });
    if (next) next.addEventListener("click", function () { page += 1; render(); });
    if (bar) bar.hidden = false;
    render();
  }
  each(document.querySelectorAll("table.sortable"), setUp);
})();
"""
"""Sorts a ``table.sortable`` by a clicked ``th[data-sort]`` (``num`` or ``text``; again to
reverse; text case-blind with digit runs compared as numbers, so S2 < S10; empty cells and
en dashes last, ties in page order), filters its lines by the text of
its ``th[data-search]`` columns and by each line's ``data-status``, and shows one page of the
lines that match. Keys are read once; a change is one array sort or filter, one DOM reorder
and the layout of one page. Two Chromium costs are avoided, each of which made a 10,000-row
sort take about 20 s instead of under 1 s: cells are reached by walking siblings, never through
``row.cells`` (every live collection is invalidated at every row moved), and the body is
emptied at once before the rows go back in order (removing laid-out rows one by one, each
removal cost milliseconds)."""


@dataclass(frozen=True)
class Column:
    """A header cell: its text, how it sorts (``num``, ``text`` or None) and if filtered by."""

    title: str
    sort: str | None = "text"
    search: bool = False

    def th(self) -> str:
        """The escaped ``<th>`` with the attributes the script reads."""
        attrs = f' data-sort="{self.sort}"' if self.sort else ""
        attrs += " data-search" if self.search else ""
        return f"<th{attrs}>{html.escape(self.title)}</th>"


def sortable_table(
    table_id: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    statuses: Sequence[str],
    classes: Sequence[str],
) -> str:
    """A ``table.sortable`` with ``<thead>``/``<tbody>`` from already-escaped cell HTML.

    ``statuses`` (one per row) become ``data-status``, which the status filter matches;
    ``classes`` (one per row, may be empty) style rows, e.g. ``failed``. Lines after the first
    :data:`PAGE_ROWS` start hidden, so the browser never lays out the whole table at once.
    """
    head = "".join(c.th() for c in columns)
    body = "".join(
        f'<tr data-status="{html.escape(status, quote=True)}"'
        + (f' class="{css}"' if css else "")
        + (" hidden>" if i >= PAGE_ROWS else ">")
        + "".join(cells)
        + "</tr>\n"
        for i, (cells, status, css) in enumerate(zip(rows, statuses, classes, strict=True))
    )
    return (
        f'<table id="{table_id}" class="sortable">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}</tbody>\n</table>\n"
    )


def _options(values: Sequence[tuple[str, str]], selected: str) -> str:
    """Escaped ``<option>`` elements from (value, text) pairs."""
    return "".join(
        f'<option value="{html.escape(v, quote=True)}"'
        + (" selected" if v == selected else "")
        + f">{html.escape(t)}</option>"
        for v, t in values
    )


def filter_bar(table_id: str, *, placeholder: str, statuses: Sequence[str]) -> str:
    """The controls of ``table_id``: a text box, a status select (all, then ``statuses``; none
    if empty), lines per page and previous/next. Hidden until the script runs."""
    label = html.escape(placeholder, quote=True)
    parts = [
        f'<input type="search" class="filter-text" placeholder="{label}" aria-label="{label}">'
    ]
    if statuses:
        choices = _options([("", "all"), *((s, s) for s in statuses)], "")
        parts.append(f'<label>Status <select class="filter-status">{choices}</select></label>')
    sizes = _options([*((str(n), str(n)) for n in PAGE_CHOICES), ("0", "all")], str(PAGE_ROWS))
    parts += [
        f'<label>Per page <select class="page-size">{sizes}</select></label>',
        '<button type="button" class="page-prev">&lsaquo; Previous</button>',
        '<span class="filter-count"></span>',
        '<button type="button" class="page-next">Next &rsaquo;</button>',
    ]
    return f'<div class="filters" data-for="{table_id}" hidden>{"".join(parts)}</div>\n'
