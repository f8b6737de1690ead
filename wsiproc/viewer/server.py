"""The viewer's HTTP transport: a threaded standard-library server, and a clean stop.

Only sockets, threads and signals live here; what each URL returns is :mod:`.app`'s job. One
thread per connection lets the browser's parallel tile requests render in parallel (libvips,
OpenSlide, Pillow and zlib release the GIL while decoding and encoding). SIGTERM and Ctrl-C
end :func:`serve` normally, so the caller closes the slides and exits 0.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from ..errors import ConfigError
from .app import Response, Viewer


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM handler to leave ``serve_forever``."""


class ViewerServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` answering with one :class:`~.app.Viewer`.

    Handler threads are daemons, so a stop never waits for a slow tile.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], viewer: Viewer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.viewer = viewer
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """One connection: keep-alive HTTP/1.1, GET only, errors as one-line 500s."""

    protocol_version = "HTTP/1.1"
    server: ViewerServer
    server_version = "wsiproc-view"

    def setup(self) -> None:
        """No Nagle delay: headers and body go out at once, not 40 ms apart (delayed ACK)."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        try:
            response = self.server.viewer.handle(
                self.path, if_none_match=self.headers.get("If-None-Match")
            )
        except Exception as exc:  # noqa: BLE001 - a server answers every request: one line, 500
            print(f"wsiproc view: {self.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            response = Response(500, b"internal error\n")
        try:
            self._send(response)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser cancelled the request (a tile panned out of view)

    def _send(self, response: Response) -> None:
        """Write status, headers and body (a results file is copied in pieces)."""
        self.send_response(response.status)
        size = response.file.stat().st_size if response.file else len(response.body)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(size if response.status != 304 else 0))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if response.status == 304:
            return
        if response.file is not None:
            with open(response.file, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)
        else:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        """Quiet: a tiled viewer makes hundreds of requests a minute."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`_Stop` in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(viewer: Viewer, *, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve ``viewer`` on ``host:port`` until Ctrl-C or SIGTERM; call ``on_ready(url)`` once
    listening (port 0 picks a free port, which the URL names).

    Raises
    ------
    ConfigError
        The address cannot be bound (in use, not this machine's, no permission).
    """
    try:
        server = ViewerServer((host, port), viewer)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError("--port", f"cannot listen on {host}:{port}: {reason}") from exc
    shown = f"[{host}]" if ":" in host else host
    try:
        with _sigterm_raises():
            on_ready(f"http://{shown}:{server.server_address[1]}/")
            server.serve_forever(poll_interval=0.25)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.server_close()
