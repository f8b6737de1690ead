"""Which GPU an ``infer`` process uses: a free one, claimed through a lock file per device.

Separate from :mod:`wsiproc.models` because it is about the machine, not the model: without
it every job on a multi-GPU server lands on ``cuda:0`` (issue 9).
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
from collections.abc import Sequence
from pathlib import Path

LOCK_DIR_ENV = "WSIPROC_GPU_LOCK_DIR"
"""Environment variable naming the lock directory (default :data:`DEFAULT_LOCK_DIR`)."""

DEFAULT_LOCK_DIR = Path("/tmp/wsiproc-gpu-locks")
"""Not ``$TMPDIR``: cluster jobs often get a private one, and every job must see the same."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class GpuClaim:
    """One process's GPU: ``cuda:<index>``, held through an exclusive lock on its lock file.

    ``index`` is torch's (after ``CUDA_VISIBLE_DEVICES``), ``device_id`` the physical device
    it maps to. ``lock_path`` is None when the process shares the device unclaimed (every
    device was taken, or the lock directory is unusable); ``note`` then says why, for the log.

    The lock lives as long as the open descriptor: until :meth:`release` or the process ends,
    however it ends (the kernel drops it, so a ``kill -9`` never leaves a device taken).
    Owned by the process that claimed it; not thread-safe; never pickled.
    """

    def __init__(
        self,
        index: int,
        device_id: str,
        *,
        lock_path: Path | None = None,
        fd: int | None = None,
        note: str | None = None,
    ) -> None:
        self.index = index
        self.device_id = device_id
        self.lock_path = lock_path
        self.note = note
        self._fd = fd

    @property
    def device(self) -> str:
        """The torch device string, ``cuda:<index>``: never bare ``cuda`` (that is ``cuda:0``)."""
        return f"cuda:{self.index}"

    @property
    def locked(self) -> bool:
        """Whether this process holds the device's lock (False: shared, or released)."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new claimer)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        how = f"lock={str(self.lock_path)!r}" if self.locked else "shared"
        return f"GpuClaim(device={self.device!r}, device_id={self.device_id!r}, {how})"


def visible_device_ids(count: int, cuda_visible_devices: str | None) -> list[str]:
    """The physical id of each of torch's ``count`` CUDA devices, as ``CUDA_VISIBLE_DEVICES``
    lists them (``"2,3"``: index 0 is ``"2"``; UUIDs such as ``GPU-…`` are kept as written).

    Unset means no mask (index = id); an empty string means no GPU at all. Numbers are
    normalised (``"02"`` is ``"2"``), so two jobs masking the same GPU name it alike. Indices
    the list does not reach (torch saw more devices than listed) keep their own number.

    Examples
    --------
    >>> visible_device_ids(2, "2,3")
    ['2', '3']
    >>> visible_device_ids(1, "GPU-8a1f, GPU-77c2")
    ['GPU-8a1f']
    >>> visible_device_ids(2, None), visible_device_ids(0, "")
    (['0', '1'], [])
    """
    if cuda_visible_devices is None:
        listed: list[str] = []
    else:
        listed = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
    listed = [str(int(e)) if e.isdigit() else e for e in listed]
    return [listed[i] if i < len(listed) else str(i) for i in range(count)]


def physical_device_ids(count: int) -> list[str]:
    """Each visible device's UUID from torch, else :func:`visible_device_ids` of the mask.

    The UUID names a device whatever the mask: a cluster that gives every job its own GPU
    as ``CUDA_VISIBLE_DEVICES=0`` (SLURM with device cgroups) would otherwise have all its
    jobs claim the same ``0``.
    """
    fallback = visible_device_ids(count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    try:
        import torch

        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
    except (ImportError, AttributeError, AssertionError, RuntimeError):
        return fallback  # no CUDA build, or a torch without device UUIDs
    if len(set(uuids)) != count or not all(uuids):
        return fallback
    return [u if u.startswith(("GPU-", "MIG-")) else f"GPU-{u}" for u in uuids]


def lock_dir_from_env() -> Path:
    """``$WSIPROC_GPU_LOCK_DIR``, else :data:`DEFAULT_LOCK_DIR`."""
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def device_lock_path(lock_dir: Path, device_id: str) -> Path:
    """``<lock_dir>/gpu-<device_id>.lock``, with characters unsafe in a file name replaced."""
    return lock_dir / f"gpu-{_UNSAFE.sub('_', device_id)}.lock"


def claim_gpu(count: int, device_ids: Sequence[str], *, lock_dir: Path) -> GpuClaim:
    """Claim the first of ``count`` devices whose lock no other process holds.

    Never waits and never fails for want of a device. With every device claimed (more
    concurrent jobs than GPUs), the process shares ``cuda:<pid % count>`` without a lock
    and the claim's ``note`` says so: two jobs on one GPU are slower, but waiting would
    stall a run whose job count nobody capped, and ``snakemake --resources gpu=N`` (N =
    GPUs) keeps it from happening at all. An unusable lock directory also degrades to an
    unclaimed device with a note, never an error.

    Parameters
    ----------
    count
        Devices torch sees (``torch.cuda.device_count()`` in production), at least 1.
    device_ids
        Physical id of each index (:func:`physical_device_ids`); names the lock files, so
        jobs with different ``CUDA_VISIBLE_DEVICES`` masks contend for the same device.
    lock_dir
        Directory shared by every job on the machine, local to it. Created world-writable
        and sticky (mode 1777, like ``/tmp``) so every user's jobs share it, and no one can
        delete another's lock file; lock files are mode 666 so anyone can record a pid in
        them. Any local user can thus hold a device's lock, which only makes our jobs share
        a GPU, and a planted symlink is refused (``O_NOFOLLOW``), never written through.

    Returns
    -------
    GpuClaim
        Holding its device's lock until released or the process exits.

    Notes
    -----
    ``flock``, not ``fcntl`` record locks: a flock belongs to the open file, so a second
    claim in the same process sees the device taken, and closing some other descriptor of
    the file does not silently drop the lock. The descriptor is close-on-exec; a child
    forked after the claim would share the lock until it exits (the engine forks its loaders
    before the claim and spawns its writer).
    """
    if count < 1 or len(device_ids) != count:
        raise ValueError(f"need count >= 1 and one id per device, got {count}, {device_ids!r}")
    try:
        _make_lock_dir(lock_dir)
    except OSError as exc:
        index = os.getpid() % count
        note = (
            f"cannot create the GPU lock directory {lock_dir} ({exc.strerror or exc}); "
            f"using cuda:{index} unclaimed (set {LOCK_DIR_ENV} to a writable local directory)"
        )
        return GpuClaim(index, device_ids[index], note=note)
    busy: list[str] = []
    for index, device_id in enumerate(device_ids):
        path = device_lock_path(lock_dir, device_id)
        try:
            fd, holder = _try_lock(path)
        except OSError as exc:
            busy.append(f"cuda:{index} lock unusable: {exc.strerror or exc}")
            continue
        if fd is not None:
            return GpuClaim(index, device_id, lock_path=path, fd=fd)
        busy.append(f"cuda:{index} by {holder}")
    index = os.getpid() % count
    every = "the only GPU is" if count == 1 else f"all {count} GPUs are"
    note = (
        f"{every} claimed by other wsiproc jobs ({'; '.join(busy)}); sharing cuda:{index} "
        f"(cap concurrent infer jobs with snakemake --resources gpu={count})"
    )
    return GpuClaim(index, device_ids[index], note=note)


def _make_lock_dir(lock_dir: Path) -> None:
    """Create the directory mode 1777 (umask would narrow ``mkdir``'s mode, hence chmod)."""
    try:
        lock_dir.mkdir(parents=True)
    except FileExistsError:
        return
    os.chmod(lock_dir, 0o1777)


def _try_lock(path: Path) -> tuple[int | None, str]:
    """(descriptor holding the lock, "") or (None, who holds it); OSError if unusable."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        writable = True
    except PermissionError:  # another user's file, older than mode 666: lock without a pid
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        writable = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        return None, holder
    except OSError:
        os.close(fd)
        raise
    if writable:
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o666)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {_user()}\n".encode(), 0)
        except OSError:
            pass  # the pid is for messages only; the lock is what counts
    return fd, ""


def _read_holder(fd: int) -> str:
    """'pid P (user U)' from a lock file, or a vaguer phrase when it names no one."""
    try:
        words = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        words = []
    if len(words) >= 2:
        return f"pid {words[0]} (user {words[1]})"
    return "another process"


def _user() -> str:
    """The login name for the lock file, or the uid where there is none (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


_HELD: GpuClaim | None = None


def claim_process_gpu() -> GpuClaim:
    """This process's GPU: claimed on the first call, then the same claim until exit.

    Call only once torch reports a CUDA device. The claim stays referenced here, so its
    lock is held for the life of the process (a run that resumes in-process keeps its GPU).
    """
    global _HELD
    if _HELD is None:
        import torch

        count = torch.cuda.device_count()
        _HELD = claim_gpu(count, physical_device_ids(count), lock_dir=lock_dir_from_env())
    return _HELD
