"""Tests of the windows GeoJSON: format, streaming writer and ``wsiproc heatmap --geojson``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from wsiproc import cli, table
from wsiproc.errors import OutputError
from wsiproc.geojson import FeatureWriter, format_features

OUTPUTS = ("tumor", "stroma")


def write_windows(directory: Path, *, seed: int, grid_rows: int, grid_cols: int) -> Path:
    """Write windows.csv + windows.json with some windows missing; return the CSV path."""
    rng = np.random.default_rng(seed)
    cells = [(r, c) for r in range(grid_rows) for c in range(grid_cols) if rng.random() < 0.7]
    rows = np.array([r for r, _ in cells], dtype=np.int64)
    cols = np.array([c for _, c in cells], dtype=np.int64)
    n = len(cells)
    kernel, stride, scale = 256, 128, 1.75
    boxes = np.stack(
        [
            np.rint(cols * stride * scale),
            np.rint(rows * stride * scale),
            np.full(n, round(kernel * scale)),
            np.full(n, round(kernel * scale)),
        ],
        axis=1,
    ).astype(np.int64)
    values = rng.normal(size=(n, len(OUTPUTS))).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    body = table.format_rows("P1", "S1", rows, cols, boxes, 0, rng.random(n), values)
    csv_path = directory / "windows.csv"
    csv_path.write_text(",".join(table.header(OUTPUTS)) + "\n" + body, encoding="utf-8")
    meta = {
        "grid_rows": grid_rows,
        "grid_cols": grid_cols,
        "kernel_size": kernel,
        "stride": stride,
        "proc_mpp": 0.5,
        "scale": scale,
        "outputs": list(OUTPUTS),
        "output_names": list(OUTPUTS),
        "output_shape": [len(OUTPUTS)],
    }
    (directory / "windows.json").write_text(json.dumps(meta), encoding="utf-8")
    return csv_path


@pytest.fixture
def wsiproc(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run ``wsiproc heatmap ...`` in-process with only that stage registered."""
    monkeypatch.setattr(cli, "STAGES", ("heatmap",))

    def run(*argv: object) -> tuple[int, str]:
        code = cli.main(["heatmap", *(str(a) for a in argv)])
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(("seed", "grid_rows", "grid_cols"), [(0, 7, 11), (1, 1, 1), (2, 23, 5)])
def test_one_feature_per_row_with_level0_polygon_and_measurements(
    tmp_path: Path, wsiproc, seed: int, grid_rows: int, grid_cols: int
) -> None:
    csv_path = write_windows(tmp_path, seed=seed, grid_rows=grid_rows, grid_cols=grid_cols)
    geojson = tmp_path / "windows.geojson"
    argv = ["--out", tmp_path / "h.tif", "--rgb-out", tmp_path / "r.tif", "--geojson", geojson]
    assert wsiproc(csv_path, *argv) == (0, "")
    collection = json.loads(geojson.read_text(encoding="utf-8"))
    with open(csv_path, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(records)
    for feature, record in zip(collection["features"], records, strict=True):
        x, y = int(record["x"]), int(record["y"])
        w, h = int(record["width"]), int(record["height"])
        assert feature["type"] == "Feature"
        assert feature["geometry"] == {
            "type": "Polygon",
            "coordinates": [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]],
        }
        props = feature["properties"]
        assert props["objectType"] == "tile"
        assert props["name"] == f"r{record['row']}_c{record['col']}"
        want = {k: float(record[k]) for k in OUTPUTS if record[k] != "nan"}
        want["tissue"] = float(record["tissue"])
        assert props["measurements"] == want


def test_feature_writer_streams_chunks_into_one_collection(tmp_path: Path) -> None:
    path = tmp_path / "w.geojson"
    box = np.array([[0, 0, 4, 4]])
    with FeatureWriter(path, names=["p"]) as writer:
        assert repr(writer) == f"FeatureWriter({str(path)!r}, features=0)"
        for i in range(3):
            writer.write(np.array([i]), np.array([0]), box, np.array([1.0]), np.array([[i]]))
        writer.write(np.array([], int), np.array([], int), box[:0], np.zeros(0), np.zeros((0, 1)))
        assert not path.exists()  # appears only on success
    names = [f["properties"]["name"] for f in json.loads(path.read_text())["features"]]
    assert names == ["r0_c0", "r1_c0", "r2_c0"]


def test_empty_collection_is_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "w.geojson"
    with FeatureWriter(path, names=["p"]):
        pass
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


def test_failed_run_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "w.geojson"
    with pytest.raises(KeyError), FeatureWriter(path, names=["p"]):
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="file"), FeatureWriter(blocker / "w.geojson", names=[]):
        pass


def test_measurement_names_are_json_escaped() -> None:
    (text,) = format_features(
        np.array([0]),
        np.array([0]),
        np.array([[1, 2, 3, 4]]),
        np.array([np.nan]),
        np.array([[1.5]]),
        names=['a "quoted"\\name'],
    )
    assert json.loads(text)["properties"]["measurements"] == {'a "quoted"\\name': 1.5}
