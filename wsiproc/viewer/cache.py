"""A byte-bounded least-recently-used cache of encoded tiles, shared by the server's threads.

Kept apart from the renderers so its bound is one number the user sets (``--cache-mb``) and
one test checks: however long the viewer runs and however far the user pans, the cache never
holds more than that many bytes of tiles.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class TileCache:
    """Encoded tiles by key, evicting the least recently used beyond ``max_bytes``.

    Thread-safe (one lock around every access). A tile larger than the whole bound is not
    kept. ``hits`` and ``misses`` count :meth:`get` calls since creation.

    Examples
    --------
    >>> cache = TileCache(max_bytes=10)
    >>> cache.put("a", b"12345"); cache.put("b", b"12345"); cache.get("a")
    b'12345'
    >>> cache.put("c", b"123"); cache.get("b") is None, cache.get("a"), cache.size_bytes
    (True, b'12345', 8)
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return (
            f"TileCache({len(self._items)} tiles, {self.size_bytes}/{self.max_bytes} bytes, "
            f"hits={self.hits}, misses={self.misses})"
        )

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> bytes | None:
        """The tile stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        """Store ``data`` under ``key``, evicting the least recently used tiles to fit."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size_bytes -= len(old)
            self._items[key] = data
            self.size_bytes += len(data)
            while self.size_bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.size_bytes -= len(evicted)
