"""``wsiproc view``: a local tile server and pan-and-zoom page for a run's slides and heatmaps.

Modules: :mod:`.deepzoom` (tile geometry), :mod:`.tiles` (slide tiles), :mod:`.overlay`
(heatmap tiles), :mod:`.windows` (CSV rows in place), :mod:`.catalog` (the run's slides),
:mod:`.resources` (what is open), :mod:`.cache` (tile cache), :mod:`.memory` (heap
trimming), :mod:`.pages` (HTML),
:mod:`.app` (routes), :mod:`.server` (HTTP transport); ``static/`` holds the page's script and
the vendored OpenSeadragon with its licence.
"""

from __future__ import annotations

from .app import Viewer
from .server import serve

__all__ = ["Viewer", "serve"]
