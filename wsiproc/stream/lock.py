"""One writer per output: a POSIX lock beside ``windows.csv`` held for the whole run.

``fcntl`` record locks (not ``flock``) because NFS and Lustre honour them across nodes, and
the kernel drops them when the holder dies, even by SIGKILL: a lock left by a killed run
never blocks the next one. The file names the holder (pid and host) for the error message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from ..errors import OutputError


def lock_path(out: str | Path) -> Path:
    """``windows.csv`` -> ``.windows.csv.lock`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """Exclusive, non-blocking ownership of one output path; a context manager.

    Raises
    ------
    OutputError
        Another process holds the lock: ``<out>: another wsiproc infer is writing it (pid P
        on host H)``; or the lock file cannot be created.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or fail at once; retried if the file was replaced meanwhile."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(str(self.path.parent), exc.strerror or str(exc)) from exc
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(str(self.path), exc.strerror or str(exc)) from exc
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise OutputError(
                        str(self.out), f"another wsiproc infer is writing it ({holder})"
                    ) from None
                raise OutputError(str(self.path), f"cannot lock: {exc.strerror}") from exc
            # The previous holder may have removed the file between our open and our lock:
            # then we locked an orphan inode; start over on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
            return
        raise OutputError(str(self.path), "lock file keeps being replaced by another process")

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: see :meth:`acquire`)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> str:
    """'pid P on host H' from the lock file, or a vaguer phrase if it is empty."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if len(text) >= 2:
        return f"pid {text[0]} on host {text[1]}"
    return "its lock is held"
