/* Sorted, filtered and paged tables of the cohort report (wsiproc/templates/report.html).

   Sorts a table.sortable by a clicked th[data-sort] ("num" or "text"; again to reverse; text
   case-blind with digit runs compared as numbers, so S2 < S10; empty cells and en dashes last,
   ties in page order), filters its lines by the text of its th[data-search] columns and by each
   line's data-status, and shows one page of the lines that match. The rows are plain HTML, so
   without this script every line is shown; the script only reorders and hides existing rows,
   needs no network and works from disk, from an archive and behind `wsiproc view` alike.

   Keys are read once; a change is one array sort or filter, one DOM reorder and the layout of
   one page. Two Chromium costs are avoided, each of which made a 10,000-row sort take about
   20 s instead of under 1 s: cells are reached by walking siblings, never through `row.cells`
   (every live collection is invalidated at every row moved), and the body is emptied at once
   before the rows go back in order (removing laid-out rows one by one cost milliseconds each).

   Kept by hand rather than vendored: of the npm table scripts, tablesort 5.7.1 (MIT) only
   sorts, and list.js 2.3.1 (MIT, 19.5 kB minified) is four times this file's size. */
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
    if (text === "" || text === "\u2013") return null;
    if (!numeric) return text.toLowerCase().replace(/\d+/g, pad);
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
        .join("\n").toLowerCase();
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
          : (first + 1) + "\u2013" + last + " of " + matched.length +
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
