"""The real Snakemake workflow, run as a subprocess in tmp_path: lint and format, config and
sheet errors, and (slow) the demo cohort end to end with its rerun behaviour.

Snakemake runs as ``python -m snakemake`` with this interpreter's bin directory first on PATH,
so the rules find the same ``wsiproc`` (and snakefmt finds ``shfmt``). Every run uses
``--workflow-profile none`` and its own working directory (Snakemake locks it).
"""

from __future__ import annotations

import collections
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import yaml

from wsiproc import synth

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
DEFAULT_PROFILE = REPO / "workflow" / "profiles" / "default"
BIN_DIR = os.path.dirname(sys.executable)

#: Files each slide gets in {outdir}/{patient}/{slide}/.
SLIDE_OUTPUTS = (
    "level.json",
    "thumbnail.png",
    "mask.png",
    "windows.csv",
    "windows.json",
    "heatmap.tif",
    "heatmap_rgb.tif",
    "windows.geojson",
    "qc.json",
    "qc.html",
)
PER_SLIDE_RULES = ("select_level", "infer", "heatmap", "qc")
PNG_DATA_URI = "data:image/png;base64,"


# --- helpers -------------------------------------------------------------------------------
def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", "")
    return env


def snakemake(
    workdir: Path, *args: str, timeout: int = 900, merged: bool = False
) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with 2 cores and no workflow profile (unless ``args``
    name one); ``merged`` puts stderr into stdout, in the order a terminal shows them."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--workflow-profile",
        "none",
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(
        cmd,
        cwd=workdir,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )


def output_of(proc: subprocess.CompletedProcess) -> str:
    """stdout and stderr of a finished process, for messages and asserts."""
    return f"{proc.stdout}\n{proc.stderr}"


_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")


def planned_jobs(dry_run_stdout: str) -> list[tuple[str, str]]:
    """(rule, slide or patient or "") of every job a ``-n`` run lists."""
    jobs: list[tuple[str, str]] = []
    for line in dry_run_stdout.splitlines():
        header = _JOB_HEADER.match(line.strip())
        if header:
            jobs.append((header.group(1), ""))
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.strip()[len("wildcards:") :].split(",")
            wildcards = dict(pair.strip().split("=", 1) for pair in pairs)
            jobs[-1] = (jobs[-1][0], wildcards.get("slide", wildcards.get("patient", "")))
    return jobs


def dry_run(workdir: Path, configfile: Path, *args: str) -> list[tuple[str, str]]:
    """Jobs a dry run would execute, with every file compared by mtime (no checksums)."""
    proc = snakemake(
        workdir, "-n", "--max-checksum-file-size", "0", "--configfile", str(configfile), *args
    )
    assert proc.returncode == 0, output_of(proc)
    jobs = planned_jobs(proc.stdout)
    if not jobs:
        assert "Nothing to be done" in proc.stdout, proc.stdout
    return jobs


def rule_counts(jobs: list[tuple[str, str]]) -> dict[str, int]:
    """Number of jobs per rule."""
    return dict(collections.Counter(rule for rule, _ in jobs))


def write_config(path: Path, config: dict) -> Path:
    """Write ``config`` as YAML to ``path``."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def changed_config(base: Path, target: Path, section: str, key: str, value: object) -> Path:
    """A copy of the config file ``base`` with ``section.key`` set to ``value``."""
    config = yaml.safe_load(base.read_text())
    config.setdefault(section, {})[key] = value
    return write_config(target, config)


@pytest.fixture
def dummy_cohort(tmp_path: Path) -> Path:
    """A sheet of two placeholder slide files and a config, enough to parse the workflow."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a.svs", "b.tif"):
        (slides / name).write_bytes(b"not a slide")
    (tmp_path / "samples.tsv").write_text(
        "patient\tslide\tpath\tmpp\nP1\tS1\tslides/a.svs\t\nP1\tS2\tslides/b.tif\t0.25\n"
    )
    config = {"samples": "samples.tsv", "outdir": "results", "logdir": "logs"}
    return write_config(tmp_path / "config.yaml", config)


# --- (a) lint and format -------------------------------------------------------------------
def test_lint_is_clean(tmp_path: Path, dummy_cohort: Path) -> None:
    proc = snakemake(tmp_path, "--lint", "--configfile", str(dummy_cohort))
    assert proc.returncode == 0, output_of(proc)


def test_snakefmt_check_is_clean() -> None:
    pytest.importorskip("snakefmt")
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", str(REPO / "workflow")],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, output_of(proc)


def test_dry_run_plans_every_stage_per_slide(tmp_path: Path, dummy_cohort: Path) -> None:
    jobs = dry_run(tmp_path, dummy_cohort)
    assert rule_counts(jobs) == {
        "select_level": 2,
        "infer": 2,
        "heatmap": 2,
        "qc": 2,
        "patient_csv": 1,
        "report": 1,
        "all": 1,
    }


# --- (b) config and sheet errors -----------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"window": {"border": "diagonal"}}, ["window.border", "diagonal"]),
        ({"window": {"strid": 112}}, ["window", "strid"]),
        ({"modle": {"path": "builtin:stain"}}, ["modle"]),
        ({"qc": {"pen_threshold": 2}}, ["qc.pen_threshold"]),
        ({"level": {"mpp": 0.5, "level": 0}}, ["level", "exactly one"]),
    ],
    ids=["bad-enum", "typo-nested-key", "typo-top-key", "out-of-range", "two-level-specs"],
)
def test_bad_config_fails_before_any_job_naming_the_key(
    tmp_path: Path, dummy_cohort: Path, change: dict, expected: list[str]
) -> None:
    config = yaml.safe_load(dummy_cohort.read_text())
    config.update(change)
    write_config(dummy_cohort, config)
    proc = snakemake(tmp_path, "--configfile", str(dummy_cohort))
    assert proc.returncode != 0
    text = output_of(proc)
    assert "invalid config" in text
    for word in expected:
        assert word in text
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "logs").exists()


def test_sheet_with_missing_slide_fails_naming_sheet_slide_and_path(
    tmp_path: Path, dummy_cohort: Path
) -> None:
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(sheet.read_text() + "P2\tS3\tslides/gone.svs\t\n")
    proc = snakemake(tmp_path, "--configfile", str(dummy_cohort))
    assert proc.returncode != 0
    text = output_of(proc)
    assert "samples.tsv" in text
    assert "S3" in text
    assert os.path.join("slides", "gone.svs") in text
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("P 2\tS3\tslides/a.svs\t\n", "patient"),
        ("P2\tS3\tslides/a.svs\tabc\n", "mpp"),
        ("P2\tS1\tslides/a.svs\t\n", "unique"),
    ],
    ids=["bad-patient-id", "non-numeric-mpp", "duplicate-slide"],
)
def test_bad_sheet_row_fails_naming_the_column(
    tmp_path: Path, dummy_cohort: Path, row: str, expected: str
) -> None:
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(sheet.read_text() + row)
    proc = snakemake(tmp_path, "--configfile", str(dummy_cohort))
    assert proc.returncode != 0
    text = output_of(proc)
    assert "samples.tsv" in text
    assert expected in text


# --- (c) the demo cohort end to end --------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The demo cohort, generated and run once through the whole workflow."""
    workdir = tmp_path_factory.mktemp("workflow_demo")
    made = subprocess.run(
        [sys.executable, "-m", "wsiproc", "demo", str(workdir / "demo")],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, output_of(made)
    configfile = workdir / "demo" / "config.yaml"
    config = yaml.safe_load(configfile.read_text())
    run = snakemake(workdir, "--configfile", str(configfile))
    assert run.returncode == 0, output_of(run)
    sheet = pd.read_csv(config["samples"], sep="\t", dtype=str, keep_default_na=False)
    return {
        "workdir": workdir,
        "configfile": configfile,
        "config": config,
        "outdir": Path(config["outdir"]),
        "logdir": Path(config["logdir"]),
        "sheet": sheet,
        "slides": list(zip(sheet["patient"], sheet["slide"], strict=True)),
    }


@pytest.mark.slow
def test_demo_writes_every_output_and_log(demo: dict) -> None:
    outdir, logdir = demo["outdir"], demo["logdir"]
    for patient, slide in demo["slides"]:
        for name in SLIDE_OUTPUTS:
            assert (outdir / patient / slide / name).stat().st_size > 0, (slide, name)
        for rule in PER_SLIDE_RULES:
            assert (logdir / rule / patient / f"{slide}.log").is_file(), (rule, slide)
            assert (logdir / "benchmarks" / rule / patient / f"{slide}.tsv").is_file()
    for patient in demo["sheet"]["patient"].unique():
        assert (outdir / patient / f"{patient}.csv").is_file()
    assert (outdir / "report.html").is_file()
    assert (outdir / "summary.tsv").is_file()
    assert not (outdir / "logs").exists()


@pytest.mark.slow
def test_demo_features_and_their_table(demo: dict) -> None:
    """The demo enables features (builtin:tiny, every export): one features.h5 per slide,
    the exports beside it and features.tsv listing every slide ok with N and D (issue 15)."""
    import h5py

    outdir = demo["outdir"]
    table = pd.read_csv(outdir / "features.tsv", sep="\t", dtype={"patient": str, "slide": str})
    assert list(table["slide"]) == [slide for _, slide in demo["slides"]]
    assert set(table["status"]) == {"ok"} and set(table["D"]) == {128}
    for (patient, slide), n in zip(demo["slides"], table["N"], strict=True):
        folder = outdir / patient / slide
        with h5py.File(folder / "features.h5", "r") as fh:
            assert fh["features"].shape == (n, 128)
        for name in ("stamp/{s}.h5", "slideflow/{s}.pt", "clam/pt_files/{s}.pt"):
            assert (folder / name.format(s=slide)).is_file()
    assert (table["N"] == 0).sum() == 1  # the glass-only slide: a valid empty file


@pytest.mark.slow
def test_demo_patient_csv_concatenates_its_slides(demo: dict) -> None:
    outdir, sheet = demo["outdir"], demo["sheet"]
    for patient, group in sheet.groupby("patient"):
        rows = sum(
            len(pd.read_csv(outdir / patient / slide / "windows.csv")) for slide in group["slide"]
        )
        assert len(pd.read_csv(outdir / patient / f"{patient}.csv")) == rows


@pytest.mark.slow
def test_demo_heatmap_rgb_opens_in_openslide(demo: dict) -> None:
    openslide = pytest.importorskip("openslide")
    for patient, slide in demo["slides"]:
        with openslide.OpenSlide(demo["outdir"] / patient / slide / "heatmap_rgb.tif") as image:
            assert image.dimensions[0] > 0 and image.dimensions[1] > 0


@pytest.mark.slow
def test_demo_heatmap_values_sit_on_their_window_centres(demo: dict) -> None:
    """Each CSV value, found in heatmap.tif at the window's centre converted to heatmap pixels
    through the TIFF's own resolution tags (slide µm -> pixel), equals the CSV value: overlays
    are not shifted by (kernel - stride) / 2 when windows overlap (the demo: 64 / 32)."""
    tifffile = pytest.importorskip("tifffile")
    assert demo["config"]["window"]["stride"] < demo["config"]["window"]["kernel_size"]
    checked = 0
    for patient, slide in demo["slides"]:
        folder = demo["outdir"] / patient / slide
        meta = json.loads((folder / "windows.json").read_text())
        level = json.loads((folder / "level.json").read_text())
        with tifffile.TiffFile(folder / "heatmap.tif") as tif:
            page = tif.pages[0]
            values = page.asarray()
            x_res = page.tags["XResolution"].value  # pixels per cm
            pixel_um = 1e4 * x_res[1] / x_res[0]
        if values.ndim == 2:
            values = values[:, :, np.newaxis]
        table = pd.read_csv(folder / "windows.csv")
        if table.empty:  # the glass-only slide
            continue
        checked += 1
        slide_mpp = meta["proc_mpp"] / meta["scale"]  # level-0 µm/px as used
        assert level["proc_mpp"] == pytest.approx(meta["proc_mpp"])
        centre_x = (table["x"] + table["width"] / 2).to_numpy() * slide_mpp  # slide µm
        centre_y = (table["y"] + table["height"] / 2).to_numpy() * slide_mpp
        col = np.floor(centre_x / pixel_um).astype(np.int64)
        row = np.floor(centre_y / pixel_um).astype(np.int64)
        # Within half a heatmap pixel of the centre of the pixel that holds the value.
        assert np.abs((col + 0.5) * pixel_um - centre_x).max() <= pixel_um / 2 + 1e-6, slide
        for band, column in enumerate(meta["outputs"]):
            got = values[row, col, band]
            want = table[column].to_numpy(dtype=np.float32)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=slide)
    assert checked == len(demo["slides"]) - 1


@pytest.mark.slow
def test_demo_qc_pages_embed_png_images(demo: dict) -> None:
    for patient, slide in demo["slides"]:
        page = (demo["outdir"] / patient / slide / "qc.html").read_text()
        assert PNG_DATA_URI in page, slide


@pytest.mark.slow
def test_demo_report_html_links_each_slides_thumbnail(demo: dict) -> None:
    report = demo["outdir"] / "report.html"
    page = report.read_text()
    assert PNG_DATA_URI not in page  # linked, not embedded (issue 9)
    # The report runs after every slide's last output: none is "not run" in it.
    statuses = {slide: row["status"] for slide, row in summary_table(demo["outdir"]).items()}
    for patient, slide in demo["slides"]:
        assert f">{slide}</td>" in page
        assert statuses[slide] in ("ok", "flagged"), (slide, statuses[slide])
        assert f'src="{patient}/{slide}/thumbnail.png"' in page
        assert (report.parent / patient / slide / "thumbnail.png").is_file()


@pytest.mark.slow
def test_demo_snakemake_report_builds(demo: dict) -> None:
    target = demo["workdir"] / "report.zip"
    proc = snakemake(
        demo["workdir"], "--configfile", str(demo["configfile"]), "--report", str(target)
    )
    assert proc.returncode == 0, output_of(proc)
    assert target.stat().st_size > 0


@pytest.mark.slow
def test_unchanged_rerun_has_nothing_to_do(demo: dict) -> None:
    assert dry_run(demo["workdir"], demo["configfile"]) == []


@pytest.mark.slow
def test_touched_slide_reruns_only_its_own_chain(demo: dict) -> None:
    patient, slide = demo["slides"][1]
    path = Path(demo["config"]["samples"]).parent / demo["sheet"]["path"][1]
    before = path.stat()
    later = time.time() + 60
    os.utime(path, (later, later))
    try:
        jobs = dry_run(demo["workdir"], demo["configfile"])
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    expected = {(rule, slide) for rule in PER_SLIDE_RULES}
    expected |= {("patient_csv", patient), ("report", ""), ("all", "")}
    # The demo enables features: the slide's features job and the cohort table too (issue 15).
    expected |= {("features", slide), ("features_table", "")}
    # ... and its slide model on those features, and the cohort predictions (issue 16).
    expected |= {("slide_predict", slide), ("attention_heatmap", slide), ("predictions", "")}
    assert sorted(jobs) == sorted(expected)


@pytest.mark.slow
def test_window_stride_change_reruns_every_infer_but_no_level_selection(demo: dict) -> None:
    stride = demo["config"]["window"]["stride"] // 2
    configfile = changed_config(
        demo["configfile"], demo["workdir"] / "stride.yaml", "window", "stride", stride
    )
    counts = rule_counts(dry_run(demo["workdir"], configfile))
    n_slides = len(demo["slides"])
    assert counts.get("infer") == n_slides
    assert "select_level" not in counts
    assert counts.get("heatmap") == n_slides
    assert counts.get("qc") == n_slides


@pytest.mark.slow
def test_qc_option_change_reruns_only_qc_and_report(demo: dict) -> None:
    configfile = changed_config(
        demo["configfile"], demo["workdir"] / "qc.yaml", "qc", "pen_threshold", 0.5
    )
    counts = rule_counts(dry_run(demo["workdir"], configfile))
    assert counts == {"qc": len(demo["slides"]), "report": 1, "all": 1}


@pytest.mark.slow
def test_heatmap_option_change_reruns_only_heatmaps_and_the_report(demo: dict) -> None:
    configfile = changed_config(
        demo["configfile"], demo["workdir"] / "heatmap.yaml", "heatmap", "colormap", "magma"
    )
    counts = rule_counts(dry_run(demo["workdir"], configfile))
    # The report waits for every heatmap (a slide is done only with it), so it follows them.
    # The attention heatmaps (the demo's slide model, issue 16) share the colormap.
    n = len(demo["slides"])
    assert counts == {"heatmap": n, "attention_heatmap": n, "report": 1, "all": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("model", "batch_size", 7), ("model", "device", "cpu"), ("loader", "workers", 2)],
)
def test_runtime_knob_change_reruns_nothing(
    demo: dict, section: str, key: str, value: object
) -> None:
    configfile = changed_config(
        demo["configfile"], demo["workdir"] / f"{key}.yaml", section, key, value
    )
    assert dry_run(demo["workdir"], configfile) == []


@pytest.mark.slow
def test_edited_sheet_reruns_only_the_cohort_tables(demo: dict) -> None:
    """The report and, with features enabled (the demo), features.tsv (issue 15)."""
    sheet = Path(demo["config"]["samples"])
    before, stat = sheet.read_text(), sheet.stat()
    header, *rows = before.splitlines(keepends=True)
    try:
        sheet.write_text(header + "".join(reversed(rows)))
        jobs = dry_run(demo["workdir"], demo["configfile"])
    finally:
        sheet.write_text(before)
        os.utime(sheet, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # ... and, with the slide model enabled (the demo), predictions.tsv (issue 16).
    cohort_tables = [("all", ""), ("features_table", ""), ("predictions", ""), ("report", "")]
    assert sorted(jobs) == cohort_tables


@pytest.mark.slow
def test_slide_added_to_one_patient_reruns_only_that_patients_csv(demo: dict) -> None:
    """patient_csv reads the sheet as a param, not an input (issue 9): a new slide of one
    patient reruns that patient's CSV and no other."""
    sheet = Path(demo["config"]["samples"])
    before, stat = sheet.read_text(), sheet.stat()
    header, first = (line.split("\t") for line in before.splitlines()[:2])
    added = dict(zip(header, first, strict=True)) | {"slide": "ADDED"}
    patient = added["patient"]
    assert set(demo["sheet"]["patient"]) - {patient}, "the demo needs a second patient"
    try:
        sheet.write_text(before + "\t".join(added[k] for k in header) + "\n")
        jobs = dry_run(demo["workdir"], demo["configfile"])
    finally:
        sheet.write_text(before)
        os.utime(sheet, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    expected = {(rule, "ADDED") for rule in PER_SLIDE_RULES}
    expected |= {("patient_csv", patient), ("report", ""), ("all", "")}
    # The demo enables features: the slide's features job and the cohort table too (issue 15).
    expected |= {("features", "ADDED"), ("features_table", "")}
    expected |= {("slide_predict", "ADDED"), ("attention_heatmap", "ADDED"), ("predictions", "")}
    assert sorted(jobs) == sorted(expected)


def summary_table(outdir: Path) -> dict[str, dict[str, str]]:
    """The rows of ``summary.tsv`` by slide id."""
    table = pd.read_csv(outdir / "summary.tsv", sep="\t", dtype=str, keep_default_na=False)
    return {row["slide_id"]: row for row in table.to_dict("records")}


def last_lines(proc: subprocess.CompletedProcess, n: int = 2) -> list[str]:
    """The last ``n`` non-empty lines of a run's (merged) output."""
    return [line for line in proc.stdout.splitlines() if line.strip()][-n:]


@pytest.mark.slow
def test_bad_slides_fail_alone_are_reported_and_rerun_once_fixed(
    demo: dict, tmp_path: Path
) -> None:
    """A corrupt slide (fails in infer) and a zero-byte one (fails in select_level), each in
    its own patient, beside two good slides, run with the default profile (keep-going)."""
    source = Path(demo["config"]["samples"]).parent
    slides = tmp_path / "slides"
    slides.mkdir()
    good = demo["sheet"].iloc[[0, 5]]
    for path in good["path"]:
        shutil.copy2(source / path, slides / Path(path).name)
    # Level 0 at the demo's processing mpp (1.0): infer reads the zeroed level-0 tile, while
    # select_level's thumbnail comes from a coarser level and succeeds.
    corrupt = synth.write_pyramidal_tiff(
        slides / "corrupt.tif", synth.tissue_image(2048, 2048, seed=14), mpp=1.0
    )
    synth.corrupt_tile(corrupt)
    (slides / "empty.svs").write_bytes(b"")
    rows = ["patient\tslide\tpath\tmpp"]
    rows += [
        f"{p}\t{s}\tslides/{Path(path).name}\t{mpp}"
        for p, s, path, mpp in good[["patient", "slide", "path", "mpp"]].itertuples(index=False)
    ]
    rows += ["PX\tPX_corrupt\tslides/corrupt.tif\t", "PY\tPY_empty\tslides/empty.svs\t"]
    (tmp_path / "samples.tsv").write_text("\n".join(rows) + "\n")
    config = dict(demo["config"])
    config.update(
        samples=str(tmp_path / "samples.tsv"),
        outdir=str(tmp_path / "results"),
        logdir=str(tmp_path / "logs"),
    )
    # The heatmap chain only: the demo's features (builtin:tiny at 0.5 µm/px) would refuse
    # these 1 µm/px slides (upsampling), which is not what this test is about (issue 15).
    config["features"] = {**config["features"], "enabled": False}
    config["slide_model"] = {**config["slide_model"], "enabled": False}  # it needs features
    configfile = write_config(tmp_path / "config.yaml", config)
    outdir, logdir = tmp_path / "results", tmp_path / "logs"
    profile = ("--workflow-profile", str(DEFAULT_PROFILE))

    proc = snakemake(tmp_path, *profile, "--configfile", str(configfile), merged=True)

    assert proc.returncode != 0
    for patient, slide in good[["patient", "slide"]].itertuples(index=False):
        for name in SLIDE_OUTPUTS:
            assert (outdir / patient / slide / name).is_file(), (slide, name)
        assert (outdir / patient / f"{patient}.csv").is_file()
    assert not (outdir / "PX" / "PX.csv").exists()
    assert not (outdir / "PY" / "PY.csv").exists()
    table = summary_table(outdir)
    assert list(table) == [*good["slide"], "PX_corrupt", "PY_empty"]
    failures = {
        "PX_corrupt": ("PX", "infer", "corrupt.tif"),
        "PY_empty": ("PY", "select_level", "empty.svs"),
    }
    page = (outdir / "report.html").read_text()
    for slide, (patient, stage, filename) in failures.items():
        row = table[slide]
        log = logdir / stage / patient / f"{slide}.log"
        assert (row["status"], row["failed_stage"], row["log"]) == ("failed", stage, str(log))
        assert filename in row["error"] and row["error"] in log.read_text()
        assert row["windows_processed"] == "NA"
        assert html.escape(row["error"]) in page and str(log) in page
        assert f"none: slide {slide} failed" in page
    statuses = collections.Counter(row["status"] for row in table.values())
    assert statuses["ok"] + statuses["flagged"] == len(good)
    assert last_lines(proc) == [
        f"wsiproc: {statuses['ok']} ok, {statuses['flagged']} flagged, "
        "2 failed: PX_corrupt, PY_empty",
        f"wsiproc: report: {outdir / 'report.html'}",
    ]

    # Nothing fixed: the failed jobs run again (and the handlers never run in a dry run).
    unfixed = snakemake(tmp_path, "-n", "--configfile", str(configfile))
    assert unfixed.returncode == 0 and "wsiproc:" not in output_of(unfixed)
    retried = {(rule, "PY_empty") for rule in PER_SLIDE_RULES}
    retried |= {("infer", "PX_corrupt"), ("heatmap", "PX_corrupt"), ("qc", "PX_corrupt")}
    retried |= {("patient_csv", "PX"), ("patient_csv", "PY"), ("report", ""), ("all", "")}
    assert sorted(planned_jobs(unfixed.stdout)) == sorted(retried)

    # Fixed (good files in place of the bad ones): only their chains, patients and the report.
    shutil.copy(source / demo["sheet"]["path"][1], corrupt)
    shutil.copy(source / demo["sheet"]["path"][0], slides / "empty.svs")
    fixed = {(rule, slide) for rule in PER_SLIDE_RULES for slide in failures}
    fixed |= {("patient_csv", "PX"), ("patient_csv", "PY"), ("report", ""), ("all", "")}
    assert sorted(dry_run(tmp_path, configfile)) == sorted(fixed)

    rerun = snakemake(tmp_path, *profile, "--configfile", str(configfile), merged=True)

    assert rerun.returncode == 0, rerun.stdout
    table = summary_table(outdir)
    assert "failed" not in {row["status"] for row in table.values()}
    assert (outdir / "PX" / "PX.csv").is_file() and (outdir / "PY" / "PY.csv").is_file()
    assert "Failed slides" not in (outdir / "report.html").read_text()
    assert last_lines(rerun)[0].endswith(" flagged, 0 failed")
    assert last_lines(rerun)[1] == f"wsiproc: report: {outdir / 'report.html'}"


@pytest.mark.slow
def test_slide_smaller_than_one_window_is_flagged_with_every_output(
    demo: dict, tmp_path: Path
) -> None:
    """Zero windows is a result: every stage succeeds, every output opens, status flagged."""
    kernel = demo["config"]["window"]["kernel_size"]
    mpp = demo["config"]["level"]["mpp"]
    side = kernel - 8  # processing pixels: at the processing mpp, smaller than one window
    tiny = synth.write_pyramidal_tiff(
        tmp_path / "tiny.tif", synth.tissue_image(side, side, seed=2), mpp=mpp
    )
    (tmp_path / "samples.tsv").write_text(f"patient\tslide\tpath\tmpp\nPT\tPT_tiny\t{tiny}\t\n")
    config = dict(demo["config"])
    config.update(
        samples=str(tmp_path / "samples.tsv"),
        outdir=str(tmp_path / "results"),
        logdir=str(tmp_path / "logs"),
    )
    # The heatmap chain only: the demo's features (builtin:tiny at 0.5 µm/px) would refuse
    # these 1 µm/px slides (upsampling), which is not what this test is about (issue 15).
    config["features"] = {**config["features"], "enabled": False}
    config["slide_model"] = {**config["slide_model"], "enabled": False}  # it needs features
    configfile = write_config(tmp_path / "config.yaml", config)

    proc = snakemake(tmp_path, "--configfile", str(configfile), merged=True)

    assert proc.returncode == 0, proc.stdout
    d = tmp_path / "results" / "PT" / "PT_tiny"
    for name in SLIDE_OUTPUTS:
        assert (d / name).is_file(), name
    assert (d / "windows.csv").read_text().count("\n") == 1  # the header
    assert json.loads((d / "windows.json").read_text())["grid_rows"] == 0
    with openslide.OpenSlide(d / "heatmap_rgb.tif") as osr:
        assert osr.dimensions == (1, 1)
    assert (tmp_path / "results" / "PT" / "PT.csv").read_text().count("\n") == 1
    row = summary_table(tmp_path / "results")["PT_tiny"]
    assert row["status"] == "flagged" and "no_windows" in row["flags"].split(",")
    assert last_lines(proc)[0] == "wsiproc: 0 ok, 1 flagged, 0 failed"


@pytest.mark.slow
def test_demo_pen_slide_heatmap_is_tissue_not_ink(demo: dict) -> None:
    """The demo's marker stroke (ground truth re-rendered from its seed) gates no window, and
    the stain model's values stay in the tissue range, not the ink's."""
    from wsiproc.demo import DEMO_SLIDES

    index = next(i for i, s in enumerate(DEMO_SLIDES) if s.pen_mark)
    spec = DEMO_SLIDES[index]
    _, _, ink = synth.render_slide(
        spec.width, spec.height, seed=index, pen_mark=True, nucleus_radius_px=2.0 / spec.mpp
    )
    table = pd.read_csv(demo["outdir"] / spec.patient / spec.slide / "windows.csv")
    integral = np.pad(ink, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    x0, y0 = table["x"].to_numpy(), table["y"].to_numpy()
    x1 = np.minimum(x0 + table["width"].to_numpy(), spec.width)
    y1 = np.minimum(y0 + table["height"].to_numpy(), spec.height)
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    ink_fraction = covered / ((x1 - x0) * (y1 - y0))
    assert len(table) > 300
    assert (ink_fraction > 0.5).mean() <= 0.05
    assert table["hematoxylin"].quantile(0.99) < 0.4  # ink reads 0.4 and more
    qc_page = (demo["outdir"] / spec.patient / spec.slide / "qc.html").read_text()
    assert "marker ink in magenta" in qc_page and "Ink left out of the tissue" in qc_page


def test_model_trained_at_another_mpp_is_refused_before_any_job(
    tmp_path: Path, dummy_cohort: Path
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"not read: the sidecar decides")
    (tmp_path / "model.pt.json").write_text(json.dumps({"mpp": 0.25}))
    config = yaml.safe_load(dummy_cohort.read_text())
    config["model"] = {"path": str(model)}
    config["level"] = {"mpp": 0.5}
    write_config(dummy_cohort, config)
    proc = snakemake(tmp_path, "--configfile", str(dummy_cohort))
    assert proc.returncode != 0
    text = output_of(proc)
    assert "invalid config: model.path:" in text
    assert "trained at 0.25 µm/px" in text and "processed at 0.5 µm/px" in text
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
    config["model"]["allow_mpp_mismatch"] = True
    write_config(dummy_cohort, config)
    assert dry_run(tmp_path, dummy_cohort)  # allowed: it plans
