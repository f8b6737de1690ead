"""Headless Debian ``chromium`` driven over the Chrome DevTools Protocol, for the viewer's tests.

A small synchronous client (one page, one WebSocket): navigate, evaluate JavaScript, click
with real mouse events, take screenshots as arrays, and record every request the page made.
No browser is downloaded: the system's ``chromium`` runs with a fresh profile and no network
services, so a page that needed the internet would show it in :meth:`Chromium.requests`.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ALLOW_NO_BROWSER = "WSIPROC_ALLOW_NO_BROWSER"
"""Set to 1 to skip (not fail) the browser tests where no chromium is installed."""

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    """The chromium executable: ``$WSIPROC_CHROMIUM``, else ``chromium`` on PATH."""
    return os.environ.get("WSIPROC_CHROMIUM") or shutil.which("chromium")


class Chromium:
    """One headless chromium with one page of ``width × height`` CSS pixels; must be closed."""

    def __init__(self, executable: str, *, width: int = 1200, height: int = 800) -> None:
        import websocket

        self.profile = Path(tempfile.mkdtemp(prefix="wsiproc-chromium-"))
        self._log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        try:
            port = self._devtools_port(timeout_s=60)
            page = self._page_target(port, timeout_s=30)
            self.ws = websocket.create_connection(page, timeout=120, suppress_origin=True)
            self.send("Page.enable")
            self.send("Network.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, *, timeout_s: float) -> int:
        """The port chromium wrote to ``DevToolsActivePort`` in its profile."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.profile / "chromium.log").read_text(errors="replace")
                raise RuntimeError(f"chromium exited with {self.proc.returncode}:\n{log[-2000:]}")
            if marker.is_file():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    @staticmethod
    def _page_target(port: int, *, timeout_s: float) -> str:
        """The WebSocket URL of chromium's first page."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise TimeoutError("chromium opened no page")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call one DevTools method and return its result; events met meanwhile are kept."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout_s: float = 60, settle_s: float = 0.0) -> Any:
        """Poll ``expression`` until it is truthy (and still is after ``settle_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                if settle_s:
                    time.sleep(settle_s)
                    value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(0.1)
        raise TimeoutError(f"still false after {timeout_s} s: {expression}")

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its document to load."""
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href === {json.dumps(url)}")

    def click(self, x: float, y: float) -> None:
        """A left click at page coordinates (CSS pixels), as real mouse events."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> np.ndarray:
        """The page as an (height, width, 3) uint8 RGB array, in CSS pixels."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        return np.asarray(image.convert("RGB"))

    def save_screenshot(self, path: str | os.PathLike[str]) -> None:
        """The page as a PNG file."""
        Image.fromarray(self.screenshot()).save(path)

    def requests(self) -> list[str]:
        """URLs of every request the page made since the last :meth:`navigate`."""
        self.send("Runtime.evaluate", expression="0")  # collect events queued so far
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        """Close the connection, stop chromium and delete its profile."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def browser_or_fail(width: int, height: int) -> Chromium:
    """A headless chromium for browser tests: they fail without one (CI installs Debian's),
    and skip only when WSIPROC_ALLOW_NO_BROWSER=1 says so."""
    import pytest

    executable = find_chromium()
    if executable is None:
        if os.environ.get(ALLOW_NO_BROWSER) == "1":
            pytest.skip(f"no chromium on PATH and {ALLOW_NO_BROWSER}=1")
        pytest.fail(
            "chromium not found: install it (apt-get install chromium) or set "
            f"{ALLOW_NO_BROWSER}=1 to skip the browser tests"
        )
    return Chromium(executable, width=width, height=height)
