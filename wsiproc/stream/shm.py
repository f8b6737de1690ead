"""A fixed pool of shared-memory slots, each holding one batch of uint8 windows.

Backed by a file in ``/dev/shm`` (tmpfs) mapped by every process, so pixels are never pickled
and RAM stays bounded by ``n_slots`` batches whatever the slide size. A file, rather than
``multiprocessing.shared_memory``, keeps Python's resource tracker out of the lifetime rules.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import numpy as np


def _shm_dir() -> str:
    """``/dev/shm`` where it is a writable directory, else the temp directory."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _remove_stale_pools() -> None:
    """Delete pool files whose creating process no longer exists (left by SIGKILL)."""
    for entry in Path(_shm_dir()).glob("wsiproc-*.slots"):
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
        mode = "w+" if create else "r+"
        self._array = np.memmap(path, dtype=np.uint8, mode=mode, shape=(n_slots, *self.slot_shape))

    @classmethod
    def create(cls, n_slots: int, slot_shape: tuple[int, ...]) -> SlotPool:
        """A new pool in shared memory (first removing pools of engines that were killed)."""
        _remove_stale_pools()
        path = os.path.join(_shm_dir(), f"wsiproc-{os.getpid()}-{uuid.uuid4().hex[:8]}.slots")
        return cls(path, n_slots, slot_shape, create=True)

    @classmethod
    def attach(cls, path: str, n_slots: int, slot_shape: tuple[int, ...]) -> SlotPool:
        """Map an existing pool."""
        return cls(path, n_slots, slot_shape, create=False)

    def view(self, slot: int) -> np.ndarray:
        """The array of slot ``slot`` (writes are visible to every process)."""
        return self._array[slot]

    def unlink(self) -> None:
        """Remove the backing file (owner only); mapped views stay valid until dropped."""
        if self._owner:
            Path(self.path).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"SlotPool({self.path!r}, n_slots={self.n_slots}, slot_shape={self.slot_shape})"
