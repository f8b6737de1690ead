"""GPU claims (issue 9): real processes contending for real lock files in ``tmp_path``.

No GPU is needed: :func:`wsiproc.gpus.claim_gpu` takes the device count and ids, and the
engine's wiring is checked with torch's CUDA queries replaced.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wsiproc import gpus
from wsiproc.gpus import GpuClaim, claim_gpu, device_lock_path, visible_device_ids
from wsiproc.stream.plan import RunIdentity, fingerprint

ROOT = Path(__file__).resolve().parents[1]

# Claims a GPU the way `wsiproc infer` does, prints the claim, holds it until stdin closes.
HOLDER = """
import json, os, sys
from wsiproc.gpus import claim_gpu, lock_dir_from_env, visible_device_ids
count = int(sys.argv[1])
ids = visible_device_ids(count, os.environ.get("CUDA_VISIBLE_DEVICES"))
claim = claim_gpu(count, ids, lock_dir=lock_dir_from_env())
print(json.dumps({"index": claim.index, "id": claim.device_id, "locked": claim.locked,
                  "note": claim.note}), flush=True)
sys.stdin.read()
"""


class Holders:
    """Holder processes of one test; all killed at its end."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, count: int, visible: str | None = None) -> subprocess.Popen[str]:
        env = dict(os.environ, WSIPROC_GPU_LOCK_DIR=str(self.lock_dir))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def claim(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"holder {proc.pid} exited with {proc.wait()}"
        return json.loads(line)

    def run(self, count: int, visible: str | None = None) -> tuple[int, dict[str, Any]]:
        """Start one holder and wait for its claim: (pid, claim)."""
        proc = self.start(count, visible)
        return proc.pid, self.claim(proc)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[Holders]:
    h = Holders(tmp_path / "locks")
    yield h
    h.close()


def test_visible_device_ids_map_torch_indices_to_the_listed_physical_ids():
    assert visible_device_ids(3, None) == ["0", "1", "2"]
    assert visible_device_ids(2, "2,3") == ["2", "3"]
    assert visible_device_ids(2, " 3 ,02") == ["3", "2"]
    assert visible_device_ids(1, "2,3") == ["2"]
    assert visible_device_ids(2, "GPU-8a1f-77,GPU-0c2e-11") == ["GPU-8a1f-77", "GPU-0c2e-11"]
    assert visible_device_ids(0, "") == []
    assert visible_device_ids(2, "5") == ["5", "1"]


def test_lock_file_names_are_safe_for_any_device_id(tmp_path):
    assert device_lock_path(tmp_path, "GPU-8a1f").name == "gpu-GPU-8a1f.lock"
    assert device_lock_path(tmp_path, "MIG-GPU-8a1f/1/0").name == "gpu-MIG-GPU-8a1f_1_0.lock"
    assert device_lock_path(tmp_path, "../x").parent == tmp_path


def test_concurrent_processes_claim_distinct_gpus(holders):
    procs = [holders.start(3) for _ in range(3)]  # all started before any claim is read
    claims = [holders.claim(p) for p in procs]
    assert sorted(c["index"] for c in claims) == [0, 1, 2]
    assert all(c["locked"] and c["note"] is None for c in claims)
    assert sorted(p.name for p in holders.lock_dir.iterdir()) == [
        "gpu-0.lock",
        "gpu-1.lock",
        "gpu-2.lock",
    ]
    mode = stat.S_IMODE(holders.lock_dir.stat().st_mode)
    assert mode == 0o1777, oct(mode)  # every user's jobs share it; no one deletes another's lock


def test_one_job_more_than_gpus_shares_a_gpu_with_a_warning(holders):
    pids = [holders.run(2)[0] for _ in range(2)]
    pid, claim = holders.run(2)
    assert not claim["locked"]
    assert claim["index"] == pid % 2
    note = claim["note"]
    assert note.startswith("all 2 GPUs are claimed by other wsiproc jobs")
    assert all(f"pid {p} " in note for p in pids), note
    assert f"sharing cuda:{pid % 2}" in note and "--resources gpu=2" in note


def test_sigkill_of_a_holder_frees_its_gpu(holders):
    first = holders.start(2)
    assert holders.claim(first)["index"] == 0
    second = holders.start(2)
    assert holders.claim(second)["index"] == 1
    first.send_signal(signal.SIGKILL)
    first.wait()
    _, claim = holders.run(2)
    assert claim == {"index": 0, "id": "0", "locked": True, "note": None}


def test_jobs_with_different_masks_contend_for_the_same_physical_gpu(holders):
    _, a = holders.run(2, visible="2,3")
    assert (a["index"], a["id"], a["locked"]) == (0, "2", True)
    _, b = holders.run(2, visible="3,2")  # index 0 is physical 3: still free
    assert (b["index"], b["id"], b["locked"]) == (0, "3", True)
    _, c = holders.run(1, visible="2")  # index 0 is physical 2, which a holds
    assert (c["index"], c["locked"]) == (0, False)
    assert c["note"].startswith("the only GPU is claimed")
    _, d = holders.run(2, visible="GPU-aa,GPU-bb")
    assert (d["index"], d["id"], d["locked"]) == (0, "GPU-aa", True)
    assert (holders.lock_dir / "gpu-GPU-aa.lock").exists()


def test_a_second_claim_in_the_same_process_does_not_take_the_same_gpu(tmp_path):
    first = claim_gpu(2, ["0", "1"], lock_dir=tmp_path)
    second = claim_gpu(2, ["0", "1"], lock_dir=tmp_path)
    try:
        assert (first.index, second.index) == (0, 1)
        assert repr(first) == (
            f"GpuClaim(device='cuda:0', device_id='0', lock={str(tmp_path / 'gpu-0.lock')!r})"
        )
        first.release()
        assert repr(first) == "GpuClaim(device='cuda:0', device_id='0', shared)"
        third = claim_gpu(2, ["0", "1"], lock_dir=tmp_path)
        assert third.locked and third.index == 0
        third.release()
    finally:
        first.release()
        second.release()


def test_an_unusable_lock_dir_uses_a_gpu_unclaimed_with_a_note(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    claim = claim_gpu(2, ["0", "1"], lock_dir=not_a_dir / "locks")
    assert not claim.locked and claim.index == os.getpid() % 2
    assert claim.note is not None and "WSIPROC_GPU_LOCK_DIR" in claim.note


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """torch reports two CUDA devices with UUIDs; load_model records the device it gets."""
    torch = pytest.importorskip("torch")
    from wsiproc import models

    loaded: list[str] = []

    def load_model(source: str, *, kernel_px: int, device: str, **_: Any) -> Any:
        loaded.append(device)
        return models.MeanRGB()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"uuid-{i}")
    )
    monkeypatch.setattr(models, "load_model", load_model)
    monkeypatch.setenv("WSIPROC_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(gpus, "_HELD", None)
    yield loaded
    if gpus._HELD is not None:
        gpus._HELD.release()


def _collector_device(model: str, device: str) -> tuple[str, str | None]:
    from wsiproc.stream.engine import InferRequest, _make_collector

    req = InferRequest("s.svs", "o.csv", 8, 8, model=model, device=device)
    _, _, used, gpu = _make_collector(req)
    return used, gpu


def test_engine_loads_the_model_on_the_claimed_gpu(fake_cuda, tmp_path, holders):
    _, other = holders.run(2, visible="GPU-uuid-0,GPU-uuid-1")  # another job holds the first
    assert (other["index"], other["locked"]) == (0, True)
    assert _collector_device("m.pt", "auto") == ("cuda:1", "GPU-uuid-1")
    assert fake_cuda == ["cuda:1"]
    assert _collector_device("m.pt", "cuda") == ("cuda:1", "GPU-uuid-1")  # one claim per process
    _, last = holders.run(2, visible="GPU-uuid-1,GPU-uuid-0")  # ours is held, by this process
    assert (last["locked"], last["note"].startswith("all 2 GPUs are claimed")) == (False, True)


def test_engine_with_device_cpu_claims_nothing(fake_cuda, tmp_path):
    assert _collector_device("m.pt", "cpu") == ("cpu", None)
    assert _collector_device("builtin:mean-rgb", "cuda") == ("cpu", None)  # numpy model
    assert fake_cuda == ["cpu", "cpu"]
    assert gpus._HELD is None and not (tmp_path / "locks").exists()


def test_physical_ids_are_torch_uuids_when_unique(fake_cuda, monkeypatch):
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpus.physical_device_ids(2) == ["GPU-uuid-0", "GPU-uuid-1"]
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid="u"))
    assert gpus.physical_device_ids(2) == ["2", "3"]  # duplicates: the mask's ids instead
    monkeypatch.delattr(torch.cuda, "get_device_properties")
    assert gpus.physical_device_ids(2) == ["2", "3"]


def test_resume_fingerprint_ignores_which_gpu():
    """A run killed on cuda:0 resumes on cuda:1, never from a CPU checkpoint."""
    base: dict[str, Any] = {
        "slide": {},
        "plan": {},
        "kernel_px": 8,
        "stride_px": 8,
        "border": "valid",
        "min_tissue": 0.0,
        "max_ink": 0.1,
        "tissue_source": "thumbnail",
        "model": "m.pt",
        "model_identity": "x",
        "outputs": ("a",),
        "batch_size": 4,
        "precision": "fp32",
        "reader": "pyvips",
        "chunk_px": 64,
        "tile_px": None,
        "on_read_error": "fail",
        "mask": None,
        "patient": "",
        "slide_id": "s",
    }

    def fp(device: str) -> dict[str, Any]:
        return fingerprint(RunIdentity(device=device, **base))

    assert fp("cuda:0") == fp("cuda:1") == fp("cuda")
    assert fp("cuda:1") != fp("cpu")


def test_claim_repr_of_a_shared_gpu_names_no_lock():
    claim = GpuClaim(1, "GPU-x", note="shared")
    assert repr(claim) == "GpuClaim(device='cuda:1', device_id='GPU-x', shared)"
    assert claim.device == "cuda:1" and not claim.locked
