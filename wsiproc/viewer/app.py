"""The viewer's routes: a request path in, a response out, no sockets.

Kept apart from :mod:`.server` (threads, sockets, signals) so what may be served is decided in
one function that reads like a table. Nothing in a URL is used as a path: slide ids are
looked up in the run's catalog, static files in a fixed list made at start, and a results
file is served only if its resolved path lies inside the results folder. Anything else is 404.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..colormap import is_colormap, lookup_table
from ..errors import WsiprocError
from ..qc.render import VIEWER_HINT_CLASS, VIEWER_LINK_CLASS
from .cache import TileCache
from .catalog import Catalog, SlideEntry
from .memory import MemoryTrimmer
from .overlay import HeatmapRaster, encode_png
from .pages import ATTENTION_PATH, render_index, render_slide
from .resources import ResourceRegistry, SlideResources
from .tiles import encode_jpeg

STATIC_DIR = Path(__file__).with_name("static")

MAX_OUTLINE_ROWS = 20_000
"""CSV lines read at most for the window outlines of one view (the browser asks only when
zoomed in far enough for outlines to be visible)."""

_TILE = re.compile(r"^(\d{1,3})/(\d{1,7})_(\d{1,7})\.(jpeg|png)$")


@dataclass
class Response:
    """Status, body and headers of one answer."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    """A file sent in pieces instead of ``body`` (results files may be large)."""


def not_found(what: str = "not found") -> Response:
    """A 404 with a one-line reason."""
    return Response(404, f"{what}\n".encode())


def _json(data: Any) -> Response:
    """A JSON response (NaN is not JSON: callers pass text or None)."""
    return Response(200, json.dumps(data).encode(), "application/json")


def _static_files() -> dict[str, Path]:
    """Every file under ``static/`` by its URL path: the only static files ever served."""
    return {
        path.relative_to(STATIC_DIR).as_posix(): path
        for path in STATIC_DIR.rglob("*")
        if path.is_file()
    }


def _segments(path: str) -> list[str] | None:
    """The URL path's segments, percent-decoded; None if any is empty, ``.``, ``..`` or holds
    a separator or NUL (a traversal attempt, encoded or not)."""
    parts = path.split("/")[1:]
    decoded = [unquote(part) for part in parts]
    if parts == [""]:
        return []
    for part in decoded:
        if part in ("", ".", "..") or any(c in part for c in "/\\\0"):
            return None
    return decoded


class Viewer:
    """Answers every request of ``wsiproc view`` for one results folder; thread-safe.

    Must be closed (it holds slide handles).
    """

    def __init__(
        self, results: str | os.PathLike[str], *, cache_mb: float, max_open: int, max_handles: int
    ) -> None:
        self.catalog = Catalog(results)
        self.results = self.catalog.results
        self.cache = TileCache(int(cache_mb * 1024 * 1024))
        self.registry = ResourceRegistry(max_open=max_open, max_handles=max_handles)
        self.static = _static_files()
        self.trimmer = MemoryTrimmer()
        self._colormaps: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"Viewer({str(self.results)!r}, {self.cache!r})"

    def close(self) -> None:
        """Close every open slide."""
        self.registry.close()

    def handle(self, target: str, *, if_none_match: str | None = None) -> Response:
        """The response to ``GET target`` (path and query)."""
        url = urlsplit(target)
        segments = _segments(url.path)
        if segments is None:
            return not_found()
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not segments:
            page = render_index(str(self.results), self.catalog.entries())
            return Response(200, page.encode(), "text/html; charset=utf-8")
        head, rest = segments[0], segments[1:]
        if head == "static":
            return self._static("/".join(rest))
        if head == "files":
            return self._file(rest)
        if head == "colormap" and len(rest) == 1:
            return self._colormap(rest[0])
        if head == "slide" and rest:
            entry = self.catalog.get(rest[0])
            if entry is None:
                return not_found(f"no slide {rest[0]!r} in this run")
            return self._slide(entry, rest[1:], query, if_none_match)
        return not_found()

    def _static(self, name: str) -> Response:
        """A vendored or own static file, from the fixed list."""
        path = self.static.get(name)
        if path is None:
            return not_found()
        return Response(200, path.read_bytes(), _content_type(path))

    def _file(self, parts: list[str]) -> Response:
        """A file inside the results folder; HTML reports get their viewer links shown."""
        if not parts:
            return not_found()
        path = self.results.joinpath(*parts).resolve()
        if not path.is_relative_to(self.results) or not path.is_file():
            return not_found()
        if path.suffix != ".html":
            return Response(200, content_type=_content_type(path), file=path)
        page = show_viewer_links(path.read_text(encoding="utf-8", errors="replace"))
        return Response(200, page.encode(), _content_type(path))

    def _colormap(self, name: str) -> Response:
        """A 256×1 PNG of a colormap, for the legend."""
        stem = name.removesuffix(".png")
        if not name.endswith(".png") or not is_colormap(stem):
            return not_found()
        if stem not in self._colormaps:
            rgba = np.full((1, 256, 4), 255, dtype=np.uint8)
            rgba[0, :, :3] = lookup_table(stem)
            self._colormaps[stem] = encode_png(rgba)
        return Response(200, self._colormaps[stem], "image/png")

    def _slide(
        self, entry: SlideEntry, rest: list[str], query: dict[str, str], etag: str | None
    ) -> Response:
        """The slide page and everything under it."""
        res = self.registry.get(entry)
        if not rest:
            return Response(200, render_slide(res).encode(), "text/html; charset=utf-8")
        tail = "/".join(rest)
        if tail == "slide.dzi" and res.tiler is not None:
            xml = res.tiler.deepzoom.dzi_xml("jpeg")
            return Response(200, xml.encode(), "application/xml")
        if rest[0] == "slide_files" and res.tiler is not None:
            return self._slide_tile(res, "/".join(rest[1:]), etag)
        if rest[0] == "heatmap" and len(rest) >= 3 and res.raster is not None:
            return self._heatmap(res, res.raster, rest[1], rest[2:], etag)
        if rest[0] == ATTENTION_PATH and len(rest) >= 3 and res.attention is not None:
            return self._heatmap(res, res.attention.raster, rest[1], rest[2:], etag)
        if tail == "window.json" and res.table is not None:
            return self._window_at(res, query)
        if tail == "windows.json" and res.table is not None:
            return self._windows_in(res, query)
        return not_found()

    def _slide_tile(self, res: SlideResources, address: str, etag: str | None) -> Response:
        """One JPEG tile of the slide."""
        match = _TILE.match(address)
        if match is None or match.group(4) != "jpeg" or res.tiler is None:
            return not_found()
        level, col, row = (int(match.group(i)) for i in (1, 2, 3))
        key = ("slide", res.signature[:2], level, col, row)
        tiler = res.tiler
        return self._tile(key, etag, "image/jpeg", lambda: _jpeg(tiler.tile_rgb(level, col, row)))

    def _heatmap(
        self,
        res: SlideResources,
        raster: HeatmapRaster | None,
        output: str,
        rest: list[str],
        etag: str | None,
    ) -> Response:
        """A heatmap layer's DZI or one PNG tile, for one output and colormap."""
        tiler = res.tiler
        if raster is None or tiler is None or output not in raster.outputs:
            return not_found()
        stem, _, suffix = rest[0].rpartition(".")
        if len(rest) == 1 and suffix == "dzi" and is_colormap(stem):
            xml = tiler.deepzoom.dzi_xml("png")
            return Response(200, xml.encode(), "application/xml")
        colormap = rest[0].removesuffix("_files")
        match = _TILE.match("/".join(rest[1:]))
        if match is None or not is_colormap(colormap) or match.group(4) != "png":
            return not_found()
        level, col, row = (int(match.group(i)) for i in (1, 2, 3))
        band = raster.outputs.index(output)
        vmin, vmax = raster.value_range(band)
        key = ("heatmap", raster.path, res.signature, band, colormap, vmin, vmax, level, col, row)
        lut = lookup_table(colormap)

        def render() -> bytes | None:
            rgba = raster.tile_rgba(
                tiler.deepzoom, level, col, row, band=band, lut=lut, vmin=vmin, vmax=vmax
            )
            return None if rgba is None else encode_png(rgba)

        return self._tile(key, etag, "image/png", render)

    def _tile(
        self, key: tuple[object, ...], etag: str | None, content_type: str, render: Any
    ) -> Response:
        """A tile from the cache, or rendered and cached; 304 if the browser has it."""
        tag = '"' + hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest() + '"'
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        if etag == tag:
            return Response(304, headers=headers)
        data = self.cache.get(key)
        headers["X-Cache"] = "hit" if data is not None else "miss"
        if data is None:
            try:
                data = render()
            except WsiprocError as exc:
                return Response(500, f"{exc}\n".encode())
            finally:
                self.trimmer.rendered()
            if data is None:
                return not_found()
            self.cache.put(key, data)
        return Response(200, data, content_type, headers)

    def _window_at(self, res: SlideResources, query: dict[str, str]) -> Response:
        """The CSV row of the window under a level-0 point (``?x=&y=``)."""
        point = _numbers(query, ("x", "y"))
        if point is None or res.table is None:
            return not_found("give x and y in level-0 pixels")
        found = res.table.window_at(*point)
        if found is None:
            reply = {"row": None, "col": None, "columns": res.table.columns, "fields": None}
            return _json({**reply, "attention": attention_at(res, *point)})
        row, col, fields = found
        reply = {"row": row, "col": col, "columns": res.table.columns, "fields": fields}
        return _json({**reply, "attention": attention_at(res, *point)})

    def _windows_in(self, res: SlideResources, query: dict[str, str]) -> Response:
        """Boxes of the windows in a level-0 box (``?x=&y=&w=&h=``), for their outlines."""
        box = _numbers(query, ("x", "y", "w", "h"))
        if box is None or res.table is None:
            return not_found("give x, y, w and h in level-0 pixels")
        found = res.table.windows_in(*box, limit=MAX_OUTLINE_ROWS)
        return _json({"windows": found or [], "truncated": found is None})


def attention_at(res: SlideResources, l0_x: float, l0_y: float) -> dict[str, str] | None:
    """Each attention head's value of the slide model's patch under a level-0 point (its own
    grid: the encoder's patches need not be the patch model's windows); None if none."""
    if res.attention is None:
        return None
    found = res.attention.table.window_at(l0_x, l0_y)
    if found is None or found[2] is None:
        return None
    columns, fields = res.attention.table.columns, found[2]
    heads = res.attention.record.output_names
    return {name: fields[columns.index(name)] for name in heads if name in columns}


def _numbers(query: dict[str, str], keys: tuple[str, ...]) -> tuple[float, ...] | None:
    """Finite floats of the named query values, or None if one is missing or bad."""
    try:
        values = tuple(float(query[k]) for k in keys)
    except (KeyError, ValueError):
        return None
    return values if all(np.isfinite(values)) else None


def _jpeg(pixels: np.ndarray | None) -> bytes | None:
    """JPEG bytes of a tile, None for no tile."""
    return None if pixels is None else encode_jpeg(pixels)


def _content_type(path: Path) -> str:
    """MIME type by extension, UTF-8 for text."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    return kind


def show_viewer_links(page: str) -> str:
    """Unhide the report's viewer links and hide the "run wsiproc view" hint: the page is
    being served by the viewer, where the links work.

    Examples
    --------
    >>> show_viewer_links('<p class="wsiproc-view-hint">x</p><a class="wsiproc-view" hidden>')
    '<p class="wsiproc-view-hint" hidden>x</p><a class="wsiproc-view">'
    """
    page = re.sub(rf'(<a class="{VIEWER_LINK_CLASS}"[^>]*?) hidden>', r"\1>", page)
    return page.replace(
        f'<p class="{VIEWER_HINT_CLASS}">', f'<p class="{VIEWER_HINT_CLASS}" hidden>'
    )
