"""Reduced precision (issue 17): ``auto`` resolution, a real bf16 path, and what it does to runs.

Models are real torch networks made here; runs are real ``wsiproc infer`` calls on generated
slides. bf16 is checked by what the prepared module holds (parameter dtypes, graph constants),
never by speed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from _kill import kill_after_two_checkpoints

from wsiproc import synth
from wsiproc.cli import main
from wsiproc.errors import ConfigError, ModelError
from wsiproc.models import load_model
from wsiproc.precision import (
    PRECISIONS,
    cpu_bf16_flags,
    cpu_has_fast_bf16,
    prepare_module,
    resolve_precision,
    torch_dtype,
)
from wsiproc.stream.engine import partial_dir

torch = pytest.importorskip("torch")

BF16_MAX_ABS_DIFF = 0.02
"""The documented tolerance (README, docs/performance.md): softmax outputs of a bf16 run differ
from fp32 ones by at most this much."""
BF16_MIN_SPEARMAN = 0.98

XEON_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: sysret_ss_attrs\n"
KERNEL = 64


class Net(torch.nn.Module):
    """A small CNN with batch norm (folded by freezing) and a linear head: 2 logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.b1 = torch.nn.BatchNorm2d(width)
        self.c2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return self.head(self.pool(torch.relu(self.c2(y))).flatten(1))


def make_net(width: int = 16) -> Net:
    torch.manual_seed(0)
    net = Net(width)
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them matters
        net.b1.running_mean.uniform_(-0.2, 0.2)
        net.b1.running_var.uniform_(0.5, 2.0)
    return net.eval()


def save_model(path: Path, width: int = 16) -> Path:
    """The net as TorchScript with a normalising, softmax sidecar."""
    torch.jit.script(make_net(width)).save(str(path))
    sidecar = {"mean": [0.7, 0.55, 0.7], "std": [0.15, 0.2, 0.15], "activation": "softmax"}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """A 704×576 pyramidal TIFF at 0.5 mpp: 11×9 windows of 64 px."""
    image = synth.tissue_image(704, 576, seed=17)
    directory = tmp_path_factory.mktemp("precision_slides")
    return synth.write_pyramidal_tiff(directory / "s.tif", image, mpp=0.5)


def infer(slide: Path, out: Path, model: Path, precision: str, *args: str) -> int:
    argv = [
        "infer", str(slide), "--out", str(out),
        "--kernel-size", str(KERNEL), "--stride", str(KERNEL),
        "--min-tissue", "0", "--device", "cpu", "--quiet",
        "--model", str(model), "--precision", precision, *args,
    ]  # fmt: skip
    return main(argv)


def outputs(csv: Path) -> np.ndarray:
    """The two output columns of a windows CSV, as parsed floats."""
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    cols = [header.index("out_0"), header.index("out_1")]
    return np.array([[float(line.split(",")[c]) for c in cols] for line in lines[1:]])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation, ties averaged (bf16 makes near-equal background windows equal)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("cpuinfo", "flags", "expected"),
    [
        (XEON_AMX, {"amx_bf16", "avx512_bf16"}, "bf16"),
        (ZEN4, {"avx512_bf16"}, "bf16"),
        (EPYC_AVX2, set(), "fp32"),
        ("", set(), "fp32"),
    ],
    ids=["amx", "avx512-bf16-only", "avx2", "no-cpuinfo"],
)
def test_auto_on_cpu_is_bf16_only_where_the_cpu_reports_bf16_instructions(cpuinfo, flags, expected):
    assert cpu_bf16_flags(cpuinfo) == flags
    assert cpu_has_fast_bf16(cpuinfo) is bool(flags)
    assert resolve_precision("auto", "cpu", cpuinfo_text=cpuinfo) == expected


def test_flags_are_read_only_from_the_flags_line():
    """A flag name elsewhere (a model name, the bugs line) does not count."""
    text = "model name\t: amx_bf16 lookalike\nbugs\t\t: avx512_bf16\nflags\t\t: avx2\n"
    assert cpu_bf16_flags(text) == set()


def test_explicit_precisions_are_kept_whatever_the_cpu():
    assert resolve_precision("fp32", "cpu", cpuinfo_text=XEON_AMX) == "fp32"
    assert resolve_precision("bf16", "cpu", cpuinfo_text=EPYC_AVX2) == "bf16"
    assert resolve_precision("fp16", "cuda:1") == "fp16"


def test_fp16_on_cpu_and_unknown_precisions_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^precision: fp16 runs only on a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match=r"^precision: must be one of fp32, bf16, fp16, auto"):
        resolve_precision("int8", "cpu")
    assert PRECISIONS == ("fp32", "bf16", "fp16", "auto")


def test_auto_on_cuda_follows_the_gpu_not_the_cpu():
    """Without a usable CUDA device (or before compute capability 8.0) auto is fp32, even on
    an AMX CPU; with one, bf16 exactly when the GPU computes in it."""
    expected = "fp32"
    if torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] >= 8:
        expected = "bf16"
    assert resolve_precision("auto", "cuda:0", cpuinfo_text=XEON_AMX) == expected


def test_torch_dtype_refuses_an_unresolved_precision():
    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="auto"):
        torch_dtype("auto")


# --------------------------------------------------------------------------- module preparation


def test_bf16_torchscript_is_cast_before_freezing(tmp_path):
    """Freezing folds the weights (and batch norm) into graph constants: in bf16, every
    tensor constant is bf16 and the output is bf16; fp32 stays fp32."""
    scripted = torch.jit.load(str(save_model(tmp_path / "m.pt"))).eval()
    example = torch.rand(2, 3, KERNEL, KERNEL)
    frozen = prepare_module(scripted, "bf16", "cpu", example)
    graph = str(frozen.graph)
    assert "BFloat16(" in graph
    assert "Float(" not in graph.replace("BFloat16(", "")
    with torch.inference_mode():
        assert frozen(example.bfloat16()).dtype is torch.bfloat16
    fp32 = prepare_module(torch.jit.load(str(tmp_path / "m.pt")).eval(), "fp32", "cpu", example)
    assert "BFloat16" not in str(fp32.graph)


def test_bf16_exported_program_and_module_hold_bf16_parameters(tmp_path):
    example = torch.rand(2, 3, KERNEL, KERNEL)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(make_net(), (example,), dynamic_shapes=({0: batch},))
    for module in (program, make_net()):
        prepared = prepare_module(module, "bf16", "cpu", example)
        assert {p.dtype for p in prepared.parameters()} == {torch.bfloat16}
        with torch.inference_mode():
            assert prepared(example.bfloat16()).dtype is torch.bfloat16


def test_a_module_that_cannot_run_in_bf16_is_a_model_error():
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ torch.ones(x.shape[-1], 2, dtype=torch.float32)  # fp32 constant

    with pytest.raises(ModelError, match=r"^m\.pt: does not run in bf16"):
        prepare_module(Fixed(), "bf16", "cpu", torch.rand(1, 3, 4, 4), source="m.pt")


def test_torchscript_model_runs_bf16_and_returns_float32(tmp_path):
    model = load_model(str(save_model(tmp_path / "m.pt")), kernel_px=KERNEL, precision="bf16")
    assert model.precision == "bf16" and "BFloat16(" in str(model.module.graph)
    windows = np.random.default_rng(0).integers(0, 256, (5, KERNEL, KERNEL, 3), dtype=np.uint8)
    out = model(windows)
    assert out.dtype == np.float32 and out.shape == (5, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)  # softmax in fp32


# --------------------------------------------------------------------------- runs


def test_bf16_run_is_within_the_documented_tolerance_of_fp32(slide, tmp_path):
    model = save_model(tmp_path / "m.pt")
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision / "windows.csv"
        assert infer(slide, out, model, precision) == 0
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["precision"] == precision
        runs[precision] = outputs(out)
    a, b = runs["fp32"], runs["bf16"]
    assert a.shape == b.shape == (99, 2)
    assert np.isfinite(b).all()
    diff = np.abs(a - b).max()
    assert 0 < diff <= BF16_MAX_ABS_DIFF  # not zero: bf16 really ran
    assert spearman(a[:, 0], b[:, 0]) >= BF16_MIN_SPEARMAN
    # Written as float32, not as bf16 values: most lie off bf16's 8-bit-significand grid.
    on_bf16_grid = torch.from_numpy(b).bfloat16().double().numpy() == b
    assert on_bf16_grid.mean() < 0.5


def test_auto_records_the_resolved_precision(slide, tmp_path):
    model = save_model(tmp_path / "m.pt")
    out = tmp_path / "auto" / "windows.csv"
    assert infer(slide, out, model, "auto") == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["precision"] == resolve_precision("auto", "cpu")
    assert meta["precision"] in ("fp32", "bf16")
    builtin = tmp_path / "builtin" / "windows.csv"
    assert infer(slide, builtin, "builtin:mean-rgb", "auto") == 0  # numpy: auto means fp32
    assert json.loads(builtin.with_suffix(".json").read_text())["precision"] == "fp32"


def test_fp16_on_cpu_is_one_error_line(slide, tmp_path, capsys):
    model = save_model(tmp_path / "m.pt")
    assert infer(slide, tmp_path / "w.csv", model, "fp16") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: precision: fp16 runs only on a CUDA device, not cpu; use bf16 or fp32 on a CPU"
    ]
    assert not (tmp_path / "w.csv").exists()


def _killed_bf16_run(slide: Path, model: Path, out: Path) -> Path:
    """A bf16 run SIGKILLed after two groups were checkpointed; a copy of its checkpoint."""
    cmd = [
        sys.executable, "-m", "wsiproc", "infer", str(slide), "--out", str(out),
        "--kernel-size", str(KERNEL), "--stride", str(KERNEL), "--min-tissue", "0",
        "--device", "cpu", "--quiet", "--model", str(model), "--precision", "bf16",
        *RESUME_ARGS,
    ]  # fmt: skip
    kill_after_two_checkpoints(cmd, out, 180)
    saved = out.parent / "saved.partial"
    shutil.copytree(partial_dir(out), saved)
    return saved


RESUME_ARGS = ("--chunk-px", "128", "--batch-size", "4", "--workers", "1")


def test_resume_is_byte_identical_within_a_precision_and_afresh_across(slide, tmp_path):
    """Issue 17: the fingerprint holds the resolved precision."""
    model = save_model(tmp_path / "m.pt", width=96)  # slow enough to be killed mid-way
    out = tmp_path / "run" / "windows.csv"
    out.parent.mkdir()
    saved = _killed_bf16_run(slide, model, out)

    def restore() -> None:
        shutil.rmtree(partial_dir(out), ignore_errors=True)
        shutil.copytree(saved, partial_dir(out))
        out.unlink(missing_ok=True)

    fresh = {}
    for precision in ("bf16", "fp32"):
        fresh[precision] = tmp_path / f"fresh_{precision}" / "windows.csv"
        assert infer(slide, fresh[precision], model, precision, *RESUME_ARGS) == 0

    restore()
    assert infer(slide, out, model, "bf16", *RESUME_ARGS) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["resumed_windows"] > 0 and meta["precision"] == "bf16"
    assert out.read_bytes() == fresh["bf16"].read_bytes()

    restore()
    assert infer(slide, out, model, "fp32", *RESUME_ARGS) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["resumed_windows"] == 0 and meta["precision"] == "fp32"
    assert out.read_bytes() == fresh["fp32"].read_bytes()
