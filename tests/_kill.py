"""Kill a real ``wsiproc`` run mid-stream, the way a crash or the OOM killer would.

Shared by the resume tests of ``infer`` (fp32 and bf16) and ``features``: each needs a run
SIGKILLed once two groups are checkpointed, so its resume can be compared byte for byte with
an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from wsiproc.stream.checkpoint import INDEX_FILE
from wsiproc.stream.engine import partial_dir


def kill_after_two_checkpoints(
    cmd: Sequence[str], out: Path, timeout_s: float, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, SIGKILL the whole group (engine, loaders,
    writer) once the checkpoint of ``out`` lists two finished groups; return the process.

    Fails the test if the run ends by itself first or checkpoints too slowly.
    """
    proc = subprocess.Popen(
        list(cmd),
        env=None if env is None else dict(env),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    index = partial_dir(out) / INDEX_FILE
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if index.exists() and len(index.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no two chunks checkpointed within {timeout_s} s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
    return proc
