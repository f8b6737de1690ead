"""A fixed pool of shared-memory slots, each holding one batch of uint8 windows.

Backed by a file in ``/dev/shm`` (tmpfs) mapped by every process, so pixels are never pickled
and RAM stays bounded by ``n_slots`` batches whatever the slide size. A file, rather than
``multiprocessing.shared_memory``, keeps Python's resource tracker out of the lifetime rules.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from ..errors import WsiprocError

SHM_DIR = "/dev/shm"


class SharedMemoryError(WsiprocError):
    """The slot pool does not fit in shared memory, nor in the temporary directory."""


def _shm_dir() -> str:
    """``/dev/shm`` where it is a writable directory, else the temp directory."""
    if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK):
        return SHM_DIR
    return tempfile.gettempdir()


def _remove_stale_pools(directory: str) -> None:
    """Delete pool files whose creating process no longer exists (left by SIGKILL)."""
    for entry in Path(directory).glob("wsiproc-*.slots"):
        try:
            pid = int(entry.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except PermissionError:
            pass


class SlotPool:
    """``n_slots`` arrays of shape ``slot_shape`` (uint8) shared between processes.

    The creating process owns the backing file and must call :meth:`unlink`; other processes
    :meth:`attach` by path. Slot ownership is handed over through queues (a free-slot queue
    and batch messages), never shared concurrently.
    """

    def __init__(
        self, path: str, n_slots: int, slot_shape: tuple[int, ...], *, create: bool
    ) -> None:
        self.path = path
        self.n_slots = n_slots
        self.slot_shape = tuple(slot_shape)
        self._owner = create
        self.note = ""
        self._array = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n_slots, *self.slot_shape))

    @classmethod
    def create(cls, n_slots: int, slot_shape: tuple[int, ...]) -> SlotPool:
        """A new pool, its space reserved up front (first removing pools of killed engines).

        A tmpfs hands out pages lazily, so a ``/dev/shm`` that is too small (Docker's default
        is 64 MB) would kill a loader with SIGBUS mid-run; ``posix_fallocate`` makes it fail
        here instead. Then the pool falls back to a file in the temporary directory (page
        cache, a little slower) and :attr:`note` says so; if that fails too, the error names
        ``/dev/shm``, the size needed and what to change.
        """
        nbytes = n_slots * math.prod(slot_shape)
        name = f"wsiproc-{os.getpid()}-{uuid.uuid4().hex[:8]}.slots"
        first = _shm_dir()
        places = [first] + ([tempfile.gettempdir()] if first == SHM_DIR else [])
        for directory in places:
            _remove_stale_pools(directory)
            path = os.path.join(directory, name)
            if _reserve(path, nbytes):
                pool = cls(path, n_slots, slot_shape, create=True)
                if directory != first:
                    pool.note = (
                        f"{first} has {_free_mb(first)} MB free, the slot pool needs "
                        f"{_mb(nbytes)} MB: using a file in {directory} instead (a little "
                        f"slower); {_advice(slot_shape)}"
                    )
                return pool
        raise SharedMemoryError(
            f"{first}: {_free_mb(first)} MB free, the slot pool needs {_mb(nbytes)} MB "
            f"({n_slots} slots of {slot_shape[0]} windows of {slot_shape[1]}x{slot_shape[2]} px)"
            + (f", and {places[-1]} is full too" if len(places) > 1 else "")
            + f"; {_advice(slot_shape)}"
        )

    @classmethod
    def attach(cls, path: str, n_slots: int, slot_shape: tuple[int, ...]) -> SlotPool:
        """Map an existing pool."""
        return cls(path, n_slots, slot_shape, create=False)

    @property
    def nbytes(self) -> int:
        """Size of the backing file."""
        return self.n_slots * math.prod(self.slot_shape)

    def view(self, slot: int) -> np.ndarray:
        """The array of slot ``slot`` (writes are visible to every process)."""
        return self._array[slot]

    def unlink(self) -> None:
        """Remove the backing file (owner only); mapped views stay valid until dropped."""
        if self._owner:
            Path(self.path).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"SlotPool({self.path!r}, n_slots={self.n_slots}, slot_shape={self.slot_shape})"


def _reserve(path: str, nbytes: int) -> bool:
    """Create ``path`` with ``nbytes`` allocated; False (and no file) if there is no room."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return False
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate: sparse file
            return _sparse(path, nbytes)
        return False
    os.close(fd)
    return True


def _sparse(path: str, nbytes: int) -> bool:
    """A sparse file, where the file system cannot preallocate."""
    try:
        with open(path, "xb") as fh:
            fh.truncate(nbytes)
    except OSError:
        Path(path).unlink(missing_ok=True)
        return False
    return True


def _mb(nbytes: int) -> int:
    return math.ceil(nbytes / 2**20)


def _free_mb(directory: str) -> int:
    try:
        return shutil.disk_usage(directory).free // 2**20
    except OSError:
        return 0


def _advice(slot_shape: tuple[int, ...]) -> str:
    return (
        "lower --batch-size (now "
        f"{slot_shape[0]}) or --workers, or give the container more shared memory "
        "(docker run --shm-size=1g)"
    )
