"""Encoders from a timm architecture + a local weights file (issue 15, item 4).

Runs in ``.venv-timm`` (``scripts/install_timm.sh``; ``scripts/run_tests.sh`` runs ``-m timm``
there). The recipes come from docs/features.md itself: each architecture is built with random
weights from a fixed seed (the real weights are gated), saved as a user's download would be,
and run through :class:`~wsiproc.features.encoder.Encoder`; its embeddings must equal the timm
module's own output on the same normalised patches, pooled by hand, within
``rtol=1e-4`` and ``1e-4 x max|reference|`` (both fp32; the encoder feeds channels-last input,
which changes the summation order of the convolutions). ViT-g (1.1 B parameters) and ViT-H
(631 M) run at full depth on one patch: docs/features.md gives their time and memory.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _timm_recipes import timm_recipes

from wsiproc.cli import main
from wsiproc.errors import ModelError
from wsiproc.features.encoder import Encoder
from wsiproc.stream.engine import partial_dir

pytestmark = pytest.mark.timm

SLOW = {"h-optimus-0", "virchow2"}
"""The giants: 1.1 B and 631 M parameters, 30 to 80 s each on 2 cores."""


@pytest.fixture(scope="module")
def timm():
    """timm itself; absent from the main ``.venv``, where these tests skip."""
    return pytest.importorskip("timm")


def _classes(timm, kwargs: dict) -> dict:
    """The recipe's class names as classes, written out here (not the code under test)."""
    table = {"timm.layers.SwiGLUPacked": timm.layers.SwiGLUPacked, "torch.nn.SiLU": torch.nn.SiLU}
    return {k: table.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}


def _seeded(timm, arch: str, kwargs: dict) -> torch.nn.Module:
    """``arch`` with random weights from seed 0; LayerScale gammas raised from timm's 1e-5 to
    about 0.1 so every block changes the output (a block loaded wrong would show)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **_classes(timm, kwargs)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.05, 0.15)
    return model


def _patches(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _normalised(patches: np.ndarray, raw: dict) -> torch.Tensor:
    """What the encoder feeds its module: 0-1, normalised, resized to ``input_size``."""
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(raw["mean"]).view(1, 3, 1, 1)) / torch.tensor(raw["std"]).view(1, 3, 1, 1)
    size = raw["input_size"]
    if x.shape[-1] != size:
        mode = raw.get("interpolation", "bilinear")
        x = F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
    return x


def _pooled(y: torch.Tensor, raw: dict) -> torch.Tensor:
    """The sidecar's pooling, by hand."""
    pooling = raw.get("pooling", "none")
    if y.ndim == 4:
        assert pooling == "mean"
        return y.mean(dim=(2, 3))
    if y.ndim == 2:
        assert pooling == "none"
        return y
    cls, mean = y[:, 0], y[:, raw.get("prefix_tokens", 1) :].mean(dim=1)
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[pooling]


def _sidecar(weights: Path, raw: dict) -> Path:
    weights.with_name(weights.name + ".json").write_text(json.dumps(raw))
    return weights


def _save_safetensors(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _close(out: np.ndarray, ref: torch.Tensor) -> None:
    ref_np = ref.numpy()
    scale = float(np.abs(ref_np).max())
    np.testing.assert_allclose(out, ref_np, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
        for n in ("uni", "h-optimus-0", "virchow2")
    ],
)
def test_vit_recipe_equals_the_timm_module(timm, name, tmp_path):
    """UNI (ViT-L/16), H-optimus-0 (ViT-g/14 reg4), Virchow2 (ViT-H/14 SwiGLU, cls+mean)."""
    raw = timm_recipes()[name]
    section = raw["timm"]
    model = _seeded(timm, section["model"], section.get("kwargs", {}))
    patches = _patches(1 if name in SLOW else 3, raw.get("patch_size", raw["input_size"]))
    with torch.inference_mode():
        ref = _pooled(
            getattr(model, section.get("forward", "forward"))(_normalised(patches, raw)), raw
        )
    weights = _save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    del model  # the giants: one copy of the weights at a time
    gc.collect()
    try:
        enc = Encoder(str(_sidecar(weights, raw)))
        out = enc(patches)
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    finally:
        weights.unlink()  # 1.2-4.3 GB each: never two giants on disk at once
    assert out.shape == (len(patches), raw["output_dim"]) and out.dtype == np.float32
    _close(out, ref)
    assert enc.sha256 == digest
    assert json.loads(enc.identity())["spec"]["timm"]["model"] == section["model"]


@pytest.fixture(scope="module")
def resnet50(timm) -> torch.nn.Module:
    """A whole ResNet-50 (layer4 and fc included), as ``timm/resnet50.tv_in1k`` ships it."""
    return _seeded(timm, "resnet50", {})


def _trunk(full: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLAM's ResNet-50 trunc, written from the whole network: stem, layer1-3, mean."""
    h = full.maxpool(full.act1(full.bn1(full.conv1(x))))
    return full.layer3(full.layer2(full.layer1(h))).mean(dim=(2, 3))


def test_resnet50_trunc_from_a_whole_network_bin_checkpoint(resnet50, tmp_path):
    """``features_only`` + ``out_indices: [3]`` returns a list: its last map is pooled; the
    checkpoint's layer4/fc go through ``drop_keys``; a ``{"state_dict": ...}`` .bin unwraps."""
    raw = timm_recipes()["resnet50_trunc"]
    weights = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": resnet50.state_dict(), "epoch": 90}, weights)
    patches = _patches(3, raw["patch_size"])
    with torch.inference_mode():
        ref = _trunk(resnet50, _normalised(patches, raw))
    enc = Encoder(str(_sidecar(weights, raw)))
    out = enc(patches)
    assert out.shape == (3, 1024)
    _close(out, ref)


def test_features_cli_end_to_end_with_a_timm_encoder(resnet50, tiff_slide, tmp_path, capsys):
    """``wsiproc features`` with the smallest recipe on a generated slide: a valid file whose
    embeddings are the trunk's on the patches read back independently."""
    import h5py
    import openslide

    raw = timm_recipes()["resnet50_trunc"]
    weights = _sidecar(_save_safetensors(resnet50.state_dict(), tmp_path / "r50.safetensors"), raw)
    out = tmp_path / "features.h5"
    argv = ["features", str(tiff_slide), "--encoder", str(weights), "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    with h5py.File(out, "r") as fh:
        feats, coords = fh["features"][:], fh["coords"][:]
        fattrs, cattrs = dict(fh["features"].attrs), dict(fh["coords"].attrs)
        assert fh["tissue"].shape == (len(feats),)
    assert feats.dtype == np.float32 and feats.shape[1] == 1024 and len(feats) > 0
    assert coords.dtype == np.int64 and coords.shape == (len(feats), 2)
    assert np.isfinite(feats).all()
    assert fattrs["encoder"] == "resnet50_trunc" and fattrs["precision"] == "fp32"
    assert fattrs["encoder_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(fattrs["timm"])["drop_keys"] == ["layer4.", "fc."]
    assert cattrs["patch_size"] == 256
    side = int(cattrs["patch_size_level0"])
    with openslide.OpenSlide(str(tiff_slide)) as slide:
        pick = [0, len(coords) - 1]
        tiles = [
            np.asarray(slide.read_region((int(x), int(y)), 0, (side, side)).convert("RGB"))
            for x, y in coords[pick]
        ]
    assert side == 256  # the slide is at the recipe's 0.5 µm/px: no resampling on read
    with torch.inference_mode():
        ref = _trunk(resnet50, _normalised(np.stack(tiles), raw))
    _close(feats[pick], ref)


def _tiny_vit(timm, tmp_path: Path, **section) -> tuple[Path, torch.nn.Module, dict]:
    """A 1-block ViT-Ti/16 at 32 px with its weights file and sidecar."""
    kwargs = {"depth": 1, "img_size": 32, "num_classes": 0}
    model = _seeded(timm, "vit_tiny_patch16_224", kwargs)
    raw = {
        "name": "tiny",
        "input_size": 32,
        "mpp": 0.5,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "output_dim": 192,
        "timm": {"model": "vit_tiny_patch16_224", "kwargs": kwargs, **section},
    }
    weights = _save_safetensors(model.state_dict(), tmp_path / "tiny.safetensors")
    return _sidecar(weights, raw), model, raw


def test_forward_features_tokens_are_pooled_by_the_sidecar(timm, tmp_path):
    weights, model, raw = _tiny_vit(timm, tmp_path, forward="forward_features")
    raw.update(pooling="cls+mean", output_dim=384)
    _sidecar(weights, raw)
    patches = _patches(4, 32)
    with torch.inference_mode():
        ref = _pooled(model.forward_features(_normalised(patches, raw)), raw)
    _close(Encoder(str(weights))(patches), ref)


def test_architecture_with_unsaved_buffers_is_rebuilt_on_the_cpu(timm, tmp_path):
    """EVA-02 keeps its rotary tables as non-persistent buffers, absent from the file: the
    meta-device build cannot hold them, so the network is built on the CPU and copied into."""
    kwargs = {"img_size": 28, "depth": 1, "num_classes": 0}
    model = _seeded(timm, "eva02_tiny_patch14_224", kwargs)
    raw = {
        "name": "eva",
        "input_size": 28,
        "mpp": None,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "output_dim": 192,
        "timm": {"model": "eva02_tiny_patch14_224", "kwargs": kwargs},
    }
    weights = _sidecar(_save_safetensors(model.state_dict(), tmp_path / "eva.safetensors"), raw)
    patches = _patches(2, 28)
    with torch.inference_mode():
        ref = model(_normalised(patches, raw))
    _close(Encoder(str(weights))(patches), ref)


def _cli_error(slide: Path, weights: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "f.h5"
    rc = main(["features", str(slide), "--encoder", str(weights), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert not out.exists() and not partial_dir(out).exists()
    return err[0]


def test_weights_with_wrong_keys_are_one_line_naming_the_file(
    timm, svs_slide_20x, tmp_path, capsys
):
    weights, model, raw = _tiny_vit(timm, tmp_path)
    state = dict(model.state_dict())
    del state["blocks.0.norm1.bias"], state["norm.weight"]
    state["head.weight"] = torch.zeros(3, 192)
    _save_safetensors(state, weights)
    err = _cli_error(svs_slide_20x, weights, tmp_path, capsys)
    assert err.startswith(f"error: {weights}: weights do not fit timm architecture ")
    assert "2 missing (blocks.0.norm1.bias, norm.weight); 1 unexpected (head.weight)" in err


def test_weights_of_another_width_name_the_first_key_and_shapes(timm, tmp_path):
    weights, _, raw = _tiny_vit(timm, tmp_path)
    raw["timm"]["kwargs"]["embed_dim"] = 96
    _sidecar(weights, raw)
    shapes = r"with another shape \(first: cls_token, \(1, 1, 192\) in the file, \(1, 1, 96\) in"
    with pytest.raises(ModelError, match=shapes):
        Encoder(str(weights))


def test_unknown_architecture_and_bad_kwargs_name_the_sidecar_key(
    timm, svs_slide_20x, tmp_path, capsys
):
    weights, _, raw = _tiny_vit(timm, tmp_path)
    side = weights.with_name(weights.name + ".json")
    raw["timm"]["model"] = "vit_nonexistent_patch16_224"
    _sidecar(weights, raw)
    err = _cli_error(svs_slide_20x, weights, tmp_path, capsys)
    assert err.startswith(f"error: {side}: key 'timm.model': unknown timm architecture")
    raw["timm"].update(model="vit_tiny_patch16_224", kwargs={"depth": 1, "no_such_kwarg": 3})
    _sidecar(weights, raw)
    err = _cli_error(svs_slide_20x, weights, tmp_path, capsys)
    assert err.startswith(f"error: {side}: key 'timm.kwargs': ") and "no_such_kwarg" in err


def test_a_file_that_is_no_state_dict_is_one_line(timm, tmp_path):
    weights, _, _ = _tiny_vit(timm, tmp_path)
    weights.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelError, match="not a loadable safetensors file") as info:
        Encoder(str(weights))
    assert str(info.value).startswith(str(weights)) and "\n" not in str(info.value)
    bin_file = weights.with_name("list.bin")
    torch.save([torch.zeros(2)], bin_file)
    _sidecar(bin_file, json.loads(weights.with_name(weights.name + ".json").read_text()))
    with pytest.raises(ModelError, match="holds no state dict"):
        Encoder(str(bin_file))


def test_a_changed_kwarg_changes_the_identity_and_bf16_runs(timm, tmp_path):
    """The ``timm`` section is in the resume fingerprint (a changed kwarg restarts a resumed
    run), and the loaded module takes the precision cast like any other."""
    weights, model, raw = _tiny_vit(timm, tmp_path)
    first = Encoder(str(weights))
    raw["timm"]["kwargs"]["dynamic_img_size"] = True  # same weights, another network
    _sidecar(weights, raw)
    second = Encoder(str(weights))
    assert first.sha256 == second.sha256 and first.identity() != second.identity()
    patches = _patches(4, 32)
    with torch.inference_mode():
        ref = model(_normalised(patches, raw)).numpy()
    half = Encoder(str(weights), precision="bf16")
    assert half.precision == "bf16"
    out = half(patches)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
