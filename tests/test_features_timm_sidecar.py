"""The sidecar's ``timm`` section and the refusals that need no timm (issue 15, item 4).

These run in the main environment, where timm is not installed: parsing never imports torch
or timm, and a timm sidecar there is refused in one line telling how to install it. The
encoders themselves are tested in tests/test_features_timm.py (``.venv-timm``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from _timm_recipes import TIMM_RECIPES, doc_recipes, timm_recipes

from wsiproc.cli import main
from wsiproc.errors import ModelError
from wsiproc.features.sidecar import TIMM_CLASSES, parse_spec
from wsiproc.stream.engine import partial_dir

BASE = {
    "name": "r",
    "input_size": 32,
    "mpp": 0.5,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "output_dim": 8,
}


def _timm_weights(tmp_path: Path, timm_section: dict) -> Path:
    """A weights file (an empty state dict) with a sidecar naming a timm architecture."""
    weights = tmp_path / "pytorch_model.bin"
    torch.save({}, weights)
    side = {**BASE, "timm": timm_section}
    weights.with_name(weights.name + ".json").write_text(json.dumps(side))
    return weights


def test_every_recipe_in_the_docs_is_a_valid_sidecar():
    recipes = doc_recipes()
    assert set(TIMM_RECIPES) <= set(timm_recipes())
    assert {"conch_v15", "phikon-v2"} <= set(recipes) - set(timm_recipes())
    for name, raw in recipes.items():
        spec = parse_spec(raw, Path(f"{name}.json"))
        assert spec.name == name
    virchow = parse_spec(recipes["virchow2"], Path("v.json")).timm
    assert virchow is not None and virchow.kwargs["mlp_layer"] == "timm.layers.SwiGLUPacked"


def test_timm_section_defaults_and_fingerprint():
    spec = parse_spec({**BASE, "timm": {"model": "resnet18"}}, Path("r.json"))
    assert spec.timm is not None
    assert (spec.timm.kwargs, spec.timm.forward, spec.timm.drop_keys) == ({}, "forward", ())
    assert spec.to_dict()["timm"] == {
        "model": "resnet18",
        "kwargs": {},
        "forward": "forward",
        "drop_keys": [],
    }
    plain = parse_spec(BASE, Path("r.json")).to_dict()
    assert "timm" not in plain  # a file encoder's fingerprint is what it was before the key
    changed = parse_spec({**BASE, "timm": {"model": "resnet18", "kwargs": {"x": 1}}}, Path("r"))
    assert json.dumps(changed.to_dict()) != json.dumps(spec.to_dict())


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ("resnet50", "timm", "must be an object"),
        ({}, "timm.model", "missing"),
        ({"model": ""}, "timm.model", "non-empty string"),
        ({"model": "hf-hub:MahmoodLab/uni"}, "timm.model", "names a hub download"),
        ({"model": "hf_hub:bioptimus/H-optimus-0"}, "timm.model", "architecture name and kwargs"),
        ({"model": "r", "colour": 1}, "timm.colour", "unknown key"),
        ({"model": "r", "kwargs": [1]}, "timm.kwargs", "must be an object"),
        ({"model": "r", "kwargs": {"pretrained": True}}, "timm.kwargs.pretrained", "not allowed"),
        (
            {"model": "r", "kwargs": {"checkpoint_path": "/x"}},
            "timm.kwargs.checkpoint_path",
            "nothing is downloaded",
        ),
        (
            {"model": "r", "kwargs": {"act_layer": "torch.nn.ReLU6"}},
            "timm.kwargs.act_layer",
            "not one of the classes allowed",
        ),
        (
            {"model": "r", "kwargs": {"a": {"b": ["os.system", "timm.models.load"]}}},
            "timm.kwargs.a.b",
            "'timm.models.load' is not one of",
        ),
        ({"model": "r", "forward": "forward_head"}, "timm.forward", "forward, forward_features"),
        ({"model": "r", "drop_keys": "fc."}, "timm.drop_keys", "list of key prefixes"),
    ],
)
def test_bad_timm_sections_name_the_sidecar_and_the_key(section, key, problem):
    with pytest.raises(ModelError, match=problem) as info:
        parse_spec({**BASE, "timm": section}, Path("/x/w.bin.json"))
    assert str(info.value).startswith(f"/x/w.bin.json: key {key!r}:")
    assert "\n" not in str(info.value)


def test_allowed_class_names_pass_parsing():
    kwargs = {"mlp_layer": TIMM_CLASSES[0], "act_layer": "torch.nn.SiLU", "global_pool": ""}
    spec = parse_spec(
        {**BASE, "timm": {"model": "vit_huge_patch14_224", "kwargs": kwargs}}, Path("v")
    )
    assert spec.timm is not None and spec.timm.kwargs == kwargs


def test_compile_with_a_timm_encoder_is_refused_in_one_line(svs_slide_20x, tmp_path, capsys):
    weights = _timm_weights(tmp_path, {"model": "resnet18"})
    out = tmp_path / "f.h5"
    argv = ["features", str(svs_slide_20x), "--encoder", str(weights), "--out", str(out)]
    rc = main([*argv, "--compile", "--compile-cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("error: compile: ") and str(weights) in err[0]
    assert "only torch.export programs (.pt2) compile" in err[0]
    assert not out.exists() and not partial_dir(out).exists()


def test_timm_not_installed_is_one_line(svs_slide_20x, tmp_path, capsys):
    """Real: this environment has no timm (run_tests.sh runs this file in .venv only)."""
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here; this checks the environment without it")
    weights = _timm_weights(tmp_path, {"model": "resnet18"})
    want = (
        f"error: {weights}: this sidecar names a timm architecture; "
        "install timm (pip install 'wsiproc[timm]')"
    )
    out = tmp_path / "f.h5"
    rc = main(["features", str(svs_slide_20x), "--encoder", str(weights), "--out", str(out)])
    assert rc == 1 and capsys.readouterr().err.strip().splitlines() == [want]
    assert not out.exists() and not partial_dir(out).exists()
    from wsiproc.features.encoder import Encoder

    with pytest.raises(ModelError) as info:
        Encoder(str(weights))
    assert f"error: {info.value}" == want
