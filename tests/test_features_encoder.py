"""Encoders and their sidecars, and the bad inputs of ``wsiproc features`` (issue 15).

Every refusal is one ``error:`` line naming the file and the key, a non-zero exit, and no final
file. Token models are a small pure-torch ViT exported to TorchScript and ``torch.export``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _encoders import MeanColour, ViT, seeded, sidecar, write_encoder

from wsiproc.cli import main
from wsiproc.errors import ModelError
from wsiproc.features.encoder import Encoder
from wsiproc.features.sidecar import REQUIRED, parse_spec
from wsiproc.stream.engine import partial_dir

PATCHES = np.random.default_rng(3).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)


def _run(slide: Path, encoder: str | Path, out: Path, capsys, *extra: str) -> tuple[int, list]:
    rc = main(["features", str(slide), "--encoder", str(encoder), "--out", str(out), *extra])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("key", REQUIRED)
def test_sidecar_missing_a_key_is_refused_naming_file_and_key(tmp_path, key, svs_slide_20x, capsys):
    enc = write_encoder(tmp_path / "m.pt", seeded(MeanColour, 4), sidecar("m", 32, 4))
    side = enc.with_name("m.pt.json")
    raw = json.loads(side.read_text())
    del raw[key]
    side.write_text(json.dumps(raw))
    out = tmp_path / "f.h5"
    rc, err = _run(svs_slide_20x, enc, out, capsys)
    assert rc == 1 and len(err) == 1
    assert str(side) in err[0] and f"key {key!r}: missing" in err[0]
    assert not out.exists() and not partial_dir(out).exists()


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("mean", [0.5, 0.5], "list of 3"),
        ("std", [1, 0, 1], "positive"),
        ("input_size", 0, "positive integer"),
        ("mpp", -1, "positive number"),
        ("precision", "int8", "fp32, bf16, fp16, auto"),
        ("pooling", "max", "cls, mean"),
        ("colour", 1, "unknown key"),
    ],
)
def test_sidecar_values_are_validated(key, value, problem):
    raw = {**sidecar("m", 32, 4), key: value}
    with pytest.raises(ModelError, match=problem) as info:
        parse_spec(raw, Path("/x/m.pt.json"))
    assert str(info.value).startswith(f"/x/m.pt.json: key {key!r}:")


def test_unknown_encoder_file_and_builtin_are_refused(svs_slide_20x, tmp_path, capsys):
    out = tmp_path / "f.h5"
    rc, err = _run(svs_slide_20x, tmp_path / "nope.pt", out, capsys)
    assert rc == 1 and err == [f"error: {tmp_path / 'nope.pt'}: no such encoder file"]
    rc, err = _run(svs_slide_20x, "builtin:huge", out, capsys)
    assert rc == 1 and len(err) == 1 and "builtin:huge: unknown built-in encoder" in err[0]
    lone = tmp_path / "lone.pt"
    shutil.copy(write_encoder(tmp_path / "x.pt", seeded(MeanColour, 4), sidecar("x", 32, 4)), lone)
    rc, err = _run(svs_slide_20x, lone, out, capsys)
    assert rc == 1 and len(err) == 1 and "no sidecar JSON" in err[0] and "lone.pt.json" in err[0]
    assert not out.exists()


def test_output_dim_disagreeing_with_the_sidecar_is_refused(svs_slide_20x, tmp_path, capsys):
    enc = write_encoder(tmp_path / "m.pt", seeded(MeanColour, 8), sidecar("m", 32, 16))
    out = tmp_path / "f.h5"
    rc, err = _run(svs_slide_20x, enc, out, capsys)
    assert rc == 1 and len(err) == 1
    assert f"{enc}.json: key 'output_dim': says 16, but {enc} returns 8 dims" in err[0]
    assert not out.exists() and not partial_dir(out).exists()


def test_nan_embeddings_fail_and_write_nothing_final(svs_slide_20x, tmp_path, capsys):
    enc = write_encoder(
        tmp_path / "nan.pt", seeded(MeanColour, 4, float("nan")), sidecar("nan", 32, 4)
    )
    out = tmp_path / "f.h5"
    rc, err = _run(svs_slide_20x, enc, out, capsys)
    assert rc == 1 and len(err) == 1
    assert str(enc) in err[0] and "hold NaN or infinity (precision fp32)" in err[0]
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_h5_path_in_a_read_only_directory_fails_with_one_line(svs_slide_20x, tmp_path):
    """A read-only bind mount (root ignores permission bits): one line naming the path."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "features.h5"
    script = (
        f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
        f"{sys.executable} -m wsiproc features {svs_slide_20x} --encoder builtin:tiny "
        f"--out {out} --quiet"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if "mount" in proc.stderr and "wsiproc" not in proc.stderr and "error:" not in proc.stderr:
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(ro) in lines[0]
    assert "read-only file system" in lines[0].lower()
    assert not out.exists()


def test_out_under_a_regular_file_fails_with_one_line(svs_slide_20x, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = _run(svs_slide_20x, "builtin:tiny", blocker / "features.h5", capsys, "--quiet")
    assert rc == 1 and len(err) == 1 and str(blocker) in err[0]


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory) -> dict[str, Path]:
    """A 2-block, 64-wide ViT/16 at 48 px returning tokens, as TorchScript and .pt2."""
    d = tmp_path_factory.mktemp("vit")
    module = seeded(ViT, 64, 2, 4, 16, 48)
    files = {}
    for pooling, dim in (("cls", 64), ("mean", 64), ("cls+mean", 128)):
        side = sidecar(f"vit-{pooling}", 48, dim, pooling=pooling)
        files[pooling] = write_encoder(d / f"vit_{pooling.replace('+', '_')}.pt", module, side)
    files["pt2"] = write_encoder(d / "vit.pt2", module, sidecar("vit", 48, 64, pooling="cls"))
    files["none"] = write_encoder(d / "vit_none.pt", module, sidecar("vit", 48, 64))
    return files


def test_token_pooling_follows_the_sidecar(vit_files):
    """cls is token 0, mean the mean of the patch tokens, cls+mean both; checked against the
    eager module on the same normalised input."""
    module = seeded(ViT, 64, 2, 4, 16, 48).eval()
    x = torch.from_numpy(PATCHES).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = module((x - mean) / std)
    cls, avg = tokens[:, 0].numpy(), tokens[:, 1:].mean(dim=1).numpy()
    np.testing.assert_allclose(Encoder(str(vit_files["cls"]))(PATCHES), cls, atol=1e-4)
    np.testing.assert_allclose(Encoder(str(vit_files["mean"]))(PATCHES), avg, atol=1e-4)
    both = Encoder(str(vit_files["cls+mean"]))(PATCHES)
    np.testing.assert_allclose(both, np.concatenate([cls, avg], axis=1), atol=1e-4)


def test_torch_export_program_equals_torchscript(vit_files):
    a = Encoder(str(vit_files["pt2"]))(PATCHES)
    b = Encoder(str(vit_files["cls"]))(PATCHES)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_tokens_without_pooling_are_refused_naming_the_key(vit_files):
    with pytest.raises(ModelError, match=r"key 'pooling': the model returns shape \(2, 10, 64\)"):
        Encoder(str(vit_files["none"]))


def test_resizing_to_the_input_size_happens_on_the_device(vit_files, tmp_path):
    """Patches of 96 px for a 48 px encoder (sidecar patch_size 96): resized, same dims."""
    side = json.loads(vit_files["cls"].with_name(vit_files["cls"].name + ".json").read_text())
    enc_path = tmp_path / "big.pt"
    shutil.copy(vit_files["cls"], enc_path)
    (tmp_path / "big.pt.json").write_text(json.dumps({**side, "patch_size": 96}))
    enc = Encoder(str(enc_path))
    big = np.repeat(np.repeat(PATCHES, 2, axis=1), 2, axis=2)
    assert enc(big).shape == (5, 64)
    assert "vit-cls" in repr(enc) and "fp32" in repr(enc)


def test_a_corrupt_encoder_file_is_one_line(svs_slide_20x, tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    bad.with_name("bad.pt2.json").write_text(json.dumps(sidecar("bad", 32, 4)))
    rc, err = _run(svs_slide_20x, bad, tmp_path / "f.h5", capsys)
    assert rc == 1 and len(err) == 1
    assert f"{bad}: not a loadable torch.export program" in err[0]


def test_encoder_digest_is_the_files_sha256_hashed_while_it_loads(vit_files, tmp_path):
    """The digest recorded in feature files (and the resume fingerprint) is the file's sha256,
    for both formats, though it is computed in a thread beside the load; a file that cannot be
    read gives its reading error, not a wrong digest."""
    import hashlib

    from wsiproc.models import Sha256Beside

    for name in ("pt2", "cls"):
        path = vit_files[name]
        assert Encoder(str(path)).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(IsADirectoryError):
        Sha256Beside(tmp_path).result()
