"""What every worker process (loader, writer) needs: its signal set-up and waits that end
with the engine, so a killed engine never leaves orphans behind."""

from __future__ import annotations

import os
import queue as queue_mod
import signal
from typing import Any


def quiet_signals() -> None:
    """In a worker: SIGTERM kills at once (the engine cleans up), Ctrl-C is the engine's job.

    A forked worker would otherwise inherit the engine's SIGTERM handler and print tracebacks
    on Ctrl-C sent to the whole process group.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def get_while_parent_alive(q: Any, parent_pid: int) -> Any:
    """Blocking get that gives up when the parent process died (no orphans after SIGKILL)."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent_pid:
                raise SystemExit(1) from None
