"""Several slides per job (issue 19, item 3): batch assignment, the in-process batch runner
(one encoder load, a broken slide failing alone, the same features as one slide per process)
and one slide's outputs linked into place from its batch, on real synthetic slides."""

from __future__ import annotations

import json
import random
from pathlib import Path

import h5py
import pytest
from _encoders import sidecar

from wsiproc.batch.assign import assign_batches, batch_members
from wsiproc.batch.finish import finish_slide
from wsiproc.batch.keep import LOADED_LINE
from wsiproc.batch.runner import read_record
from wsiproc.cli import main
from wsiproc.errors import ConfigError, WsiprocError

# ------------------------------------------------------------------ assignment


def test_batches_are_consecutive_full_and_keep_a_patient_together_when_it_fits():
    patients = ["A", "A", "B", "C", "C", "C", "D", "E", "E", "E", "E", "E"]
    batches = assign_batches(patients, 3)
    assert batches == [1, 1, 1, 2, 2, 2, 3, 4, 4, 4, 5, 5]
    assert batches == sorted(batches)  # consecutive in sheet order
    assert all(batches.count(b) <= 3 for b in set(batches))
    members = batch_members(patients, 3)
    assert members["b3"] == [6] and members["b5"] == [10, 11]


def test_one_slide_per_job_is_one_batch_per_slide():
    assert assign_batches(["A", "A", "B"], 1) == [1, 2, 3]
    with pytest.raises(ConfigError, match="slides_per_job: must be >= 1"):
        assign_batches(["A"], 0)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rows_appended_for_new_patients_leave_every_earlier_slide_in_its_batch(k):
    rng = random.Random(k)
    patients = [f"P{i}" for i in range(60) for _ in range(rng.randint(1, 7))]
    before = assign_batches(patients, k)
    after = assign_batches([*patients, "Q1", "Q1", "Q2"], k)
    assert after[: len(before)] == before


# ------------------------------------------------------------------ runner and finish


def _batch(tmp_path: Path, slides: dict[str, Path], encoder: str = "builtin:tiny") -> list[str]:
    """``wsiproc batch`` arguments for ``slides`` (id -> file) into tmp_path/<id>/.staged."""
    argv = ["batch", "--record", str(tmp_path / "record.tsv")]
    for slide, path in slides.items():
        staged = tmp_path / slide / ".staged"
        argv += ["--item", slide, f"{path} --out {staged / 'features.h5'} --slide-id {slide}"]
    return [*argv, "features", "--", "--encoder", encoder, "--workers", "1", "--quiet"]


def test_batch_embeds_each_slide_as_wsiproc_features_and_a_broken_one_fails_alone(
    svs_slide_20x, tiff_slide, corrupt_slide, tmp_path, capsys
):
    slides = {"good1": svs_slide_20x, "bad": corrupt_slide[0], "good2": tiff_slide}
    assert main(_batch(tmp_path, slides)) == 0
    err = capsys.readouterr().err
    assert err.count(LOADED_LINE) == 1, err  # one encoder load for the three slides
    record = read_record(tmp_path / "record.tsv")
    assert [o.status for o in record.values()] == ["ok", "failed", "ok"]
    assert "corrupt or truncated tile" in record["bad"].error and "\n" not in record["bad"].error
    # The same arrays as one `wsiproc features` process per slide.
    for slide in ("good1", "good2"):
        alone = tmp_path / "alone" / f"{slide}.h5"
        argv = ["features", str(slides[slide]), "--encoder", "builtin:tiny", "--out", str(alone)]
        assert main([*argv, "--slide-id", slide, "--workers", "1", "--quiet"]) == 0
        staged = tmp_path / slide / ".staged" / "features.h5"
        with h5py.File(alone) as a, h5py.File(staged) as b:
            for name in ("features", "coords"):
                assert a[name].dtype == b[name].dtype
                assert a[name][()].tobytes() == b[name][()].tobytes(), (slide, name)

    # Per slide: the staged files linked into place (the marker last), or the slide's error.
    final = tmp_path / "good1"
    outputs = [str(final / "features.h5"), str(final / "features.json")]
    finish = ["batch-finish", "--record", str(tmp_path / "record.tsv")]
    argv = [*finish, "--slide", "good1", "--staged", str(final / ".staged"), "--final", str(final)]
    assert main([*argv, *outputs]) == 0
    for out in outputs:
        staged = final / ".staged" / Path(out).name
        assert Path(out).samefile(staged)  # a hard link: no second copy
    assert Path(outputs[1]).stat().st_mtime >= (tmp_path / "record.tsv").stat().st_mtime
    capsys.readouterr()
    bad = tmp_path / "bad"
    argv = [*finish, "--slide", "bad", "--staged", str(bad / ".staged"), "--final", str(bad)]
    code = main([*argv, str(bad / "features.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0] == f"error: {record['bad'].error}"
    assert not (bad / "features.h5").exists()


@pytest.mark.parametrize("bad", ["sidecar", "weights"])
def test_an_encoder_that_does_not_load_fails_the_batch_without_a_record(
    svs_slide_20x, tmp_path, capsys, bad
):
    """Not the slides' fault: a sidecar missing a key, or a file that is no TorchScript."""
    encoder = tmp_path / "enc.pt"
    encoder.write_bytes(b"not torchscript")
    spec = sidecar("x", 32, 8)
    if bad == "sidecar":
        del spec["mean"]
    encoder.with_suffix(".json").write_text(json.dumps(spec))
    code = main(_batch(tmp_path, {"a": svs_slide_20x, "b": svs_slide_20x}, str(encoder)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("error: "), err
    assert str(encoder.with_suffix(".json" if bad == "sidecar" else ".pt")) in err[-1]
    assert not any(line.startswith("batch: a:") for line in err)  # no slide ran
    assert not (tmp_path / "record.tsv").exists()


def test_finish_refuses_a_slide_the_record_does_not_list(tmp_path):
    (tmp_path / "record.tsv").write_text("slide\tstatus\tseconds\terror\na\tok\t1.0\t\n")
    with pytest.raises(WsiprocError, match="no row for slide b"):
        finish_slide(tmp_path / "record.tsv", "b", tmp_path, tmp_path, [str(tmp_path / "x")])
    with pytest.raises(WsiprocError, match="staged file missing"):
        finish_slide(tmp_path / "record.tsv", "a", tmp_path / "s", tmp_path, [str(tmp_path / "x")])


def test_pre_commands_are_limited_to_level_selection(tmp_path, capsys):
    record = tmp_path / "record.tsv"
    argv = ["batch", "--record", str(record), "--item", "a", "s.svs --out f.h5"]
    argv += ["--pre", "a", f"demo {tmp_path / 'demo'}", "features", "--", "--encoder", "x"]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == "error: --pre: a: must run one of level"
    assert not record.exists() and not (tmp_path / "demo").exists()
