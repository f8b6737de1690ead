"""``--compile``: a ``torch.export`` program AOT-compiled by inductor, built once into a cache
directory and loaded by every later run, with outputs equal to the eager program's.

Real processes (``python -m wsiproc infer``), as a cohort's jobs run: the point is that the
second process finds the first one's package. The slide's tissue windows (and the batch size)
are chosen so that the last batch is partial: the package is compiled for any batch up to
the batch size, and a wrong batch dimension would drop, duplicate or corrupt windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsiproc import synth

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow
KERNEL = 48
BATCH = 8
ENCODER_BATCH = 12  # 208 patches of 32 px: a partial last batch


class Net(torch.nn.Module):
    """Conv + BN + ReLU + pooled linear head: what inductor's freezing folds and fuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(y)


def seeded_net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial running statistics, so BN folding matters
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def save_program(path: Path, exported: torch.export.ExportedProgram) -> Path:
    torch.export.save(exported, str(path))
    side = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "activation": "softmax"}
    path.with_name(path.name + ".json").write_text(json.dumps(side))
    return path


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The network as a ``.pt2`` program with a dynamic batch, sidecar beside it."""
    example = torch.rand(4, 3, KERNEL, KERNEL)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(seeded_net(), (example,), dynamic_shapes=({0: batch},))
    return save_program(tmp_path_factory.mktemp("compiled_model") / "net.pt2", exported)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = synth.tissue_image(530, 440, seed=5)
    directory = tmp_path_factory.mktemp("compiled_slide")
    return synth.write_pyramidal_tiff(directory / "s.tif", image, mpp=0.5)


def infer(slide: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wsiproc", "infer", str(slide), "--out", str(out),
           "--model", str(model), "--kernel-size", str(KERNEL), "--stride", str(KERNEL),
           "--min-tissue", "0", "--batch-size", str(BATCH), "--device", "cpu", "--quiet",
           *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_compiled_once_then_loaded_with_eager_outputs(program, slide, tmp_path):
    cache = tmp_path / "cache"
    eager = infer(slide, tmp_path / "eager" / "w.csv", program)
    assert eager.returncode == 0, eager.stderr
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name / "w.csv"
        done = infer(slide, out, program, "--compile", "--compile-cache", str(cache))
        assert done.returncode == 0, done.stderr
        runs.append((pd.read_csv(out), json.loads(out.with_suffix(".json").read_text())))
    (first, first_meta), (second, second_meta) = runs
    reference = pd.read_csv(tmp_path / "eager" / "w.csv")
    n = len(reference)
    assert n % BATCH != 0, "the test needs a partial last batch"
    assert first_meta["compiled"]["cache"] == "miss"
    assert first_meta["compiled"]["max_abs_vs_eager"] <= 1e-4
    assert second_meta["compiled"]["cache"] == "hit"
    # Built twice, frozen and not; the faster full batch kept, and the hit says which.
    timed = first_meta["compiled"]["batch_seconds"]
    assert sorted(timed) == ["frozen", "not frozen"] and min(timed.values()) > 0
    faster = min(timed, key=timed.__getitem__) == "frozen"
    assert first_meta["compiled"]["freezing"] is faster
    assert second_meta["compiled"]["freezing"] is faster
    assert second_meta["compiled"]["package"] == first_meta["compiled"]["package"]
    assert second_meta["compiled"]["seconds"] < first_meta["compiled"]["seconds"]
    assert sorted(p.name for p in cache.glob("*.pt2")) == [
        Path(first_meta["compiled"]["package"]).name
    ]
    outputs = ["out_0", "out_1", "out_2"]
    for table in (first, second):
        assert len(table) == n
        assert table[["row", "col", "x", "y"]].equals(reference[["row", "col", "x", "y"]])
        np.testing.assert_allclose(table[outputs], reference[outputs], atol=1e-5)
        assert np.allclose(table[outputs].sum(axis=1), 1.0, atol=1e-5)
    # The two compiled runs ran the same package: the same bits.
    assert first[outputs].equals(second[outputs])
    # A hit loads the package without importing the compiler (1.2 s per job), and runs it to
    # the bits of torch's own loader.
    check = subprocess.run(
        [sys.executable, "-c", SAME_AS_TORCH_LOADER, first_meta["compiled"]["package"]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["without-inductor", "same-bits"]
    # A damaged cache entry (here truncated) is built again, not a failed run.
    package = Path(first_meta["compiled"]["package"])
    package.write_bytes(package.read_bytes()[:4096])
    out = tmp_path / "third" / "w.csv"
    done = infer(slide, out, program, "--compile", "--compile-cache", str(cache))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.with_suffix(".json").read_text())["compiled"]["cache"] == "miss"
    np.testing.assert_allclose(pd.read_csv(out)[outputs], reference[outputs], atol=1e-5)
    assert package.stat().st_size > 4096


SAME_AS_TORCH_LOADER = f"""
import sys
import torch
from wsiproc.compiled import load_package
x = torch.rand(5, 3, {KERNEL}, {KERNEL}, generator=torch.Generator().manual_seed(1))
x = x.contiguous(memory_format=torch.channels_last)
ours = load_package(sys.argv[1])(x)[0]
print("with-inductor" if "torch._inductor" in sys.modules else "without-inductor")
import torch._inductor
theirs = torch._inductor.aoti_load_package(sys.argv[1])(x)
print("same-bits" if torch.equal(ours, theirs) else f"differ {{(ours - theirs).abs().max()}}")
"""


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_program_with_a_fixed_batch_is_refused_in_one_line(slide, tmp_path, compile_):
    """A program exported for exactly 8 images (torch.export's default without
    ``dynamic_shapes``) cannot run the short last batch of a group: refused before any window,
    naming the file, the batch and how to export it."""
    fixed = torch.export.export(seeded_net(), (torch.rand(BATCH, 3, KERNEL, KERNEL),))
    static = save_program(tmp_path / "fixed.pt2", fixed)
    out = tmp_path / "w.csv"
    extra = ("--compile", "--compile-cache", str(tmp_path / "cache")) if compile_ else ()
    done = infer(slide, out, static, *extra)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(static) in lines[0] and f"fixed batch of {BATCH}" in lines[0]
    assert "dynamic_shapes" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("cache/*.pt2"))


def test_compile_refuses_torchscript_in_one_line(slide, tmp_path):
    torch.manual_seed(0)
    script = tmp_path / "net.pt"
    torch.jit.trace(Net().eval(), torch.rand(2, 3, KERNEL, KERNEL)).save(str(script))
    out = tmp_path / "w.csv"
    done = infer(slide, out, script, "--compile", "--compile-cache", str(tmp_path / "cache"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(script) in lines[0] and ".pt2" in lines[0]
    assert not out.exists()


def test_compiled_encoder_gives_the_eager_features(slide, tmp_path):
    """``wsiproc features --compile``: a ViT encoder's compiled embeddings equal the eager ones,
    the same rows and coordinates, and features.json records the package."""
    h5py = pytest.importorskip("h5py")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _encoders import ViT, seeded, sidecar, write_encoder

    encoder = write_encoder(
        tmp_path / "vit.pt2",
        seeded(ViT, 64, 2, 4, 8, 32),
        sidecar("vit-tiny", 32, 64, pooling="cls"),
    )
    files = {}
    for name, extra in (
        ("eager", ()),
        ("compiled", ("--compile", "--compile-cache", str(tmp_path / "c"))),
    ):
        out = tmp_path / name / "features.h5"
        cmd = [sys.executable, "-m", "wsiproc", "features", str(slide), "--encoder", str(encoder),
               "--out", str(out), "--min-tissue", "0", "--batch-size", str(ENCODER_BATCH),
               "--device", "cpu", "--quiet", *extra]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        files[name] = out
    with h5py.File(files["eager"]) as e, h5py.File(files["compiled"]) as c:
        assert len(e["features"]) % ENCODER_BATCH != 0 and len(e["features"]) > ENCODER_BATCH
        np.testing.assert_array_equal(e["coords"][:], c["coords"][:])
        np.testing.assert_allclose(c["features"][:], e["features"][:], atol=1e-4, rtol=1e-4)
    meta = json.loads(files["compiled"].with_suffix(".json").read_text())
    assert meta["compiled"]["cache"] == "miss" and meta["compiled"]["batch_size"] == ENCODER_BATCH
