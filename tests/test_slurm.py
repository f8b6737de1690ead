"""The SLURM profile on a real SLURM: a one-node cluster on this machine (Debian slurm-wlm and
munge, started by scripts/slurm_local_up.sh in a private directory with its own slurm.conf,
ports, state and munged), the demo cohort plus one broken slide submitted through
`--workflow-profile slurm`, and a TorchScript-model config whose GPU request is read from the
sbatch calls the plugin logs.

The module runs as on a lab server of another cluster: /etc/slurm/slurm.conf holds a foreign
config (the machine's own, or, where the machine has no SLURM of its own, one written for the
module and removed after), which the test cluster must neither read nor change.

Starting SLURM needs root (CI runs as root). A cluster that cannot start fails the tests
with the script's reason; they are skipped only when WSIPROC_SKIP_SLURM=1 is set by hand.
Every Snakemake run is under a hard timeout that ends in SIGKILL of its whole process group:
a status query that never answers would otherwise wait forever.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
BIN_DIR = os.path.dirname(sys.executable)
BROKEN = ("PX", "PX_broken")

pytestmark = pytest.mark.slow


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin directory first on PATH (jobs inherit it:
    the plugin submits with --export=ALL)."""
    env = dict(os.environ)
    env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", "")
    return env


def run_killable(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; past ``timeout`` seconds, SIGKILL the group."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... killed after {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def snakemake(workdir: Path, *args: str, profile: Path | str = "none", timeout: int = 600):
    """The real workflow in ``workdir`` (its own outdir/logdir), with the given profile."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    cmd += ["--workflow-profile", str(profile), *args]
    return run_killable(cmd, workdir, timeout)


SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CLUSTER = "wsiproctest"  # scripts/slurm_local_up.sh's ClusterName
# Another cluster's config: a controller on a documentation-only address (RFC 5737), so a
# client that read it could never reach anything and would fail loudly.
FOREIGN_CONF = """# Written by tests/test_slurm.py for one module run: another cluster's config.
ClusterName=foreign
SlurmctldHost=foreign-ctld(192.0.2.1)
SlurmctldPort=6817
AuthType=auth/munge
NodeName=foreign-node NodeAddr=192.0.2.2 CPUs=1
PartitionName=other Nodes=foreign-node Default=YES State=UP
"""


def system_slurm_daemons() -> list[str]:
    """The SLURM daemons running on this machine (before the test cluster starts: the
    system's own)."""
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:  # the process ended meanwhile
            continue
        if name in ("slurmctld", "slurmd", "slurmdbd"):
            names.append(f"{name} (pid {comm.parent.name})")
    return names


@pytest.fixture(scope="module")
def foreign_conf() -> bytes | None:
    """/etc/slurm/slurm.conf as another cluster's: the machine's own file if it has one; else,
    where no SLURM of the machine's runs, FOREIGN_CONF written there and removed after. None
    where a system SLURM runs without that file (configless): nothing is written then."""
    if os.environ.get("WSIPROC_SKIP_SLURM") == "1":
        pytest.skip("WSIPROC_SKIP_SLURM=1")
    if SYSTEM_CONF.exists():
        yield SYSTEM_CONF.read_bytes()
        return
    if system_slurm_daemons():
        yield None
        return
    made_dir = not SYSTEM_CONF.parent.exists()
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.write_text(FOREIGN_CONF)
    try:
        yield FOREIGN_CONF.encode()
    finally:
        if SYSTEM_CONF.read_text() == FOREIGN_CONF:
            SYSTEM_CONF.unlink()
            if made_dir:
                SYSTEM_CONF.parent.rmdir()


@pytest.fixture(scope="module")
def slurm(foreign_conf: bytes | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A running one-node SLURM in a private directory (installed and started if needed), its
    client environment (SLURM_CONF, the srun wrapper on PATH) set for the module; stopped
    after. Yields the directory."""
    cluster_dir = tmp_path_factory.mktemp("slurm-cluster")
    up_script = REPO / "scripts" / "slurm_local_up.sh"
    try:
        up = run_killable(["bash", str(up_script), str(cluster_dir)], REPO, 300)
        if up.returncode != 0:
            pytest.fail(f"SLURM did not start (scripts/slurm_local_up.sh):\n{up.stdout[-3000:]}")
        try:
            import snakemake_executor_plugin_slurm  # noqa: F401
        except ImportError:
            pytest.fail("snakemake-executor-plugin-slurm is not installed (pip install -e .[test])")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SLURM_CONF", str(cluster_dir / "slurm.conf"))
            env.setenv("PATH", f"{cluster_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
            if shutil.which("sbatch") is None:
                pytest.fail("SLURM started but sbatch is not on PATH")
            yield cluster_dir
            subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True, timeout=30)
    finally:
        down = REPO / "scripts" / "slurm_local_down.sh"
        subprocess.run(["bash", str(down), str(cluster_dir)], timeout=60)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The demo cohort and one more patient whose only slide is not a slide at all."""
    root = tmp_path_factory.mktemp("slurm")
    made = run_killable([sys.executable, "-m", "wsiproc", "demo", str(root / "demo")], root, 600)
    assert made.returncode == 0, made.stdout
    configfile = root / "demo" / "config.yaml"
    config = yaml.safe_load(configfile.read_text())
    # The heatmap chain only: its one-job-per-slide grouping is what these tests check. The
    # demo's features and slide-model stages run as jobs of their own on a cluster.
    config["features"] = {**config["features"], "enabled": False}
    config["slide_model"] = {**config["slide_model"], "enabled": False}  # it needs features
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    sheet = Path(config["samples"])
    good = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    broken = sheet.parent / "slides" / "broken.svs"
    broken.write_bytes(b"II*\x00" + os.urandom(4096))  # a TIFF header, then noise
    with sheet.open("a") as f:
        f.write(f"{BROKEN[0]}\t{BROKEN[1]}\tslides/broken.svs\t\n")
    return {
        "root": root,
        "configfile": configfile,
        "good": list(zip(good["patient"], good["slide"], strict=True)),
    }


@pytest.fixture(scope="module")
def slurm_run(slurm: Path, cohort: dict) -> dict[str, object]:
    """The cohort through the SLURM profile and, for comparison, on this machine alone."""
    root, configfile = cohort["root"], str(cohort["configfile"])
    local = snakemake(
        root, "--configfile", configfile, "--config", "outdir=local", "logdir=local_logs",
        "--cores", "2", "--keep-going",
    )  # fmt: skip
    cluster = snakemake(
        root, "--configfile", configfile, "--config", "outdir=results", "logdir=logs",
        "--jobs", "4", "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs", "--verbose",
        profile=SLURM_PROFILE,
    )  # fmt: skip
    return {"local": local, "cluster": cluster, **cohort}


def sbatch_calls(output: str) -> list[str]:
    """Every sbatch command line the SLURM plugin logged (--verbose)."""
    return re.findall(r"^sbatch call: (sbatch .*)$", output, flags=re.M)


def job_state(job_id: str) -> str:
    """SLURM's state of a job (finished jobs stay known for MinJobAge = 300 s)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30
    )
    match = re.search(r"JobState=(\w+)", shown.stdout)
    return match.group(1) if match else f"unknown ({shown.stderr.strip()})"


def wait_for_job(job_id: str, timeout_s: float) -> str:
    """SLURM's state of a job once it has ended, polled every 0.3 s (``sbatch --wait`` polls at
    growing intervals: the test took 44 s with it, 12 s with this)."""
    deadline = time.monotonic() + timeout_s
    while (state := job_state(job_id)) in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {state} after {timeout_s} s")
        time.sleep(0.3)
    return state


def test_each_slide_is_one_slurm_job_that_completes(slurm_run: dict) -> None:
    out = slurm_run["cluster"].stdout
    assert slurm_run["cluster"].returncode != 0, "the broken slide must fail the run"
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", out)
    calls = sbatch_calls(out)
    slides = [s for _, s in slurm_run["good"]] + [BROKEN[1]]
    # One group job per slide (level, infer, heatmap, qc), the broken one tried three times
    # with more memory each time.
    assert len(submitted) == len(calls) == len(slides) + 2, out[-3000:]
    broken = [int(re.search(r" --mem (\d+) ", c).group(1)) for c in calls if BROKEN[1] in c]
    assert broken == [broken[0], 2 * broken[0], 3 * broken[0]]
    for slide in slides:
        targets = [c for c in calls if f"slide={slide}'" in c]
        assert targets, f"no job for {slide}"
        for call in targets:
            for rule in ("select_level", "infer", "heatmap", "qc"):
                assert f"'{rule}:patient=" in call
    states = {job_id: job_state(job_id) for job_id, _ in submitted}
    assert list(states.values()).count("COMPLETED") == len(slurm_run["good"]), states
    assert list(states.values()).count("FAILED") == 3, states
    for job_id, log in submitted:
        assert Path(log).is_file(), f"SLURM log of job {job_id} missing: {log}"
    # Built-in model: no job asks for a GPU; every job asks for memory and time.
    for call in calls:
        assert "--gpus" not in call and "--gres" not in call
        assert re.search(r" --mem \d+ ", call) and re.search(r" -t \d+ ", call)


def test_cluster_results_equal_local_results_byte_for_byte(slurm_run: dict) -> None:
    root = slurm_run["root"]
    assert slurm_run["local"].returncode != 0  # the broken slide, on this machine too
    compared = 0
    for patient, slide in slurm_run["good"]:
        for name in ("windows.csv", "heatmap.tif"):
            cluster = root / "results" / patient / slide / name
            local = root / "local" / patient / slide / name
            if name == "windows.csv":
                assert cluster.read_bytes() == local.read_bytes(), f"{patient}/{slide}/{name}"
                compared += 1
            else:
                assert cluster.is_file() and local.is_file()
    for patient in {p for p, _ in slurm_run["good"]}:
        name = f"{patient}/{patient}.csv"
        assert (root / "results" / name).read_bytes() == (root / "local" / name).read_bytes()
    assert compared == len(slurm_run["good"])


def test_broken_slide_fails_alone_on_the_cluster(slurm_run: dict) -> None:
    out = slurm_run["cluster"].stdout
    good = len(slurm_run["good"])
    counts = re.search(r"^wsiproc: (\d+) ok, (\d+) flagged, .*?(\d+) failed: (.+)$", out, re.M)
    assert counts, out[-3000:]
    ok, flagged, failed, which = counts.groups()
    assert int(ok) + int(flagged) == good and int(failed) == 1 and which == BROKEN[1]
    summary = pd.read_csv(slurm_run["root"] / "results" / "summary.tsv", sep="\t", dtype=str)
    row = summary.set_index("slide_id").loc[BROKEN[1]]
    assert row["status"] == "failed"
    assert "broken.svs" in row["error"]


def test_torch_model_infer_asks_for_a_gpu(slurm: Path, cohort: dict) -> None:
    """On this GPU-less cluster sbatch refuses the request, so nothing runs: what is checked
    is the request itself, its partition and GPU model, and memory scaled per attempt."""
    torch = pytest.importorskip("torch")
    root = cohort["root"]
    net = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)
    )
    torch.jit.trace(net.eval(), torch.zeros(1, 3, 8, 8)).save(str(root / "model.pt"))
    gpu_config = root / "torch.yaml"
    gpu_config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": "model.pt", "device": "auto"},
                "gpu_jobs": {"partition": "main", "gpu_model": "a100", "mem_mb": 3000},
            }
        )
    )
    patient, slide = cohort["good"][0]
    target = f"gpu_results/{patient}/{slide}/qc.json"
    run = snakemake(
        root, target, "--configfile", str(cohort["configfile"]), str(gpu_config),
        "--config", "outdir=gpu_results", "logdir=gpu_logs",
        "--jobs", "2", "--slurm-init-seconds-before-status-checks", "2", "--verbose",
        profile=SLURM_PROFILE,
    )  # fmt: skip
    assert run.returncode != 0
    calls = sbatch_calls(run.stdout)
    assert len(calls) == 3, run.stdout[-3000:]  # the first attempt and two retries
    for attempt, call in enumerate(calls, 1):
        assert "--gpus=a100:1" in call and " -p main " in call
        assert f" --mem {3000 * attempt} " in call
        # The GPU job holds level selection and inference only, not heatmap or qc.
        assert "'infer:patient=" in call and "'select_level:patient=" in call
        assert "'heatmap:" not in call and "'qc:" not in call
    # Refused at submission (this cluster has no GPUs): SLURM never queued it.
    assert "submitted with SLURM jobid" not in run.stdout
    assert not (root / "gpu_results" / patient / slide / "windows.csv").exists()


def test_private_cluster_beside_another_clusters_system_config(
    slurm: Path, foreign_conf: bytes | None, tmp_path: Path
) -> None:
    """The test cluster runs from its directory alone: the system's slurm.conf (another
    cluster's) is unchanged, and a job step started with every SLURM_* variable removed but the
    job id (as the slurm-jobstep plugin starts its srun) still reaches the test cluster."""
    if foreign_conf is None:
        pytest.skip("a system SLURM runs without /etc/slurm/slurm.conf; none is written beside it")
    assert SYSTEM_CONF.read_bytes() == foreign_conf
    assert not re.search(rf"^\s*ClusterName\s*=\s*{CLUSTER}\s*$", foreign_conf.decode(), re.M)
    shown = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", shown, re.M))
    assert config["ClusterName"] == CLUSTER and config["SLURM_CONF"] == str(slurm / "slurm.conf")
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile", "SlurmdPidFile"):
        assert config[key].startswith(str(slurm)), (key, config[key])
    assert config["AuthInfo"] == f"socket={slurm / 'munge' / 'munge.socket'}"
    # The step as the plugin starts it: no SLURM_* variable but the job id. Through bin/srun
    # (first on PATH) it reaches this cluster. Where the config is the unreachable one this
    # module wrote, the real srun reads it and fails: that config is really in the way. (A
    # real system cluster is never sent a request.)
    steps = [("srun", True)]
    if foreign_conf == FOREIGN_CONF.encode():
        real_srun = shutil.which("srun", path=os.environ["PATH"].split(os.pathsep, 1)[1])
        assert real_srun and not real_srun.startswith(str(slurm))
        steps.append((real_srun, False))
    for srun, expect_ok in steps:
        out = tmp_path / f"step_{expect_ok}.out"
        step = f"env -i PATH=$PATH HOME=$HOME SLURM_JOB_ID=$SLURM_JOB_ID {srun} -n1"
        step += " printenv SLURM_JOB_ID SLURM_STEP_ID"
        job_id = subprocess.run(
            ["sbatch", "--parsable", "-t", "1", "-o", str(out), "--wrap", step],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
        state = wait_for_job(job_id, timeout_s=120)
        log = out.read_text() if out.exists() else ""
        assert (state == "COMPLETED") == expect_ok, f"{srun}: {state}: {log}"
        if expect_ok:
            assert log.split() == [job_id, "0"]  # the job's first step


# ------------------------------------------------------------------ several slides per job
# Features and slide model on, two slides per job: the sheet is the demo's with a slide whose
# full-resolution tile is corrupt beside P2_A (it fails inside its batch, at the features) and
# the broken slide beside P3_A (it fails at level selection, before the features).
BATCH_SHEET_EXTRA = {
    "P2_A": ("P2", "P2_corrupt", "corrupt.tif"),
    "P3_A": ("P3", "P3_bad", "broken.svs"),
}


def batches_of_two(slides: list[tuple[str, str]]) -> list[list[str]]:
    """The features batches of two slides per job, as wsiproc assigns them."""
    from wsiproc.batch.assign import batch_members

    members = batch_members([p for p, _ in slides], 2)
    return [[slides[i][1] for i in rows] for rows in members.values()]


@pytest.fixture(scope="module")
def batch_run(slurm: Path, cohort: dict) -> dict[str, object]:
    """Features and slide model, two slides per job, through the SLURM profile; targets the
    cohort tables only (level selection, features, slide model)."""
    from wsiproc import synth

    root = cohort["root"]
    slides_dir = Path(cohort["configfile"]).parent / "slides"
    corrupt = synth.write_pyramidal_tiff(
        slides_dir / "corrupt.tif", synth.tissue_image(2048, 2048, seed=14), mpp=0.5
    )
    synth.corrupt_tile(corrupt)
    config = yaml.safe_load(Path(cohort["configfile"]).read_text())
    old = pd.read_csv(config["samples"], sep="\t", dtype=str, keep_default_na=False)
    rows, slides = ["patient\tslide\tpath\tmpp"], []
    for _, row in old.iterrows():
        if row["slide"] == BROKEN[1]:
            continue
        rows.append("\t".join(row[["patient", "slide", "path", "mpp"]]))
        slides.append((row["patient"], row["slide"]))
        if row["slide"] in BATCH_SHEET_EXTRA:
            patient, slide, name = BATCH_SHEET_EXTRA[row["slide"]]
            rows.append(f"{patient}\t{slide}\tslides/{name}\t")
            slides.append((patient, slide))
    sheet = Path(config["samples"]).with_name("batch_samples.tsv")
    sheet.write_text("\n".join(rows) + "\n")
    config.update(samples=str(sheet), outdir=str(root / "batch_results"))
    config["logdir"] = str(root / "batch_logs")
    config["features"] = {**config["features"], "enabled": True, "slides_per_job": 2}
    config["slide_model"] = {**config["slide_model"], "enabled": True, "slides_per_job": 2}
    configfile = root / "batch.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    targets = [str(root / "batch_results" / n) for n in ("features.tsv", "predictions.tsv")]
    run = snakemake(
        root, *targets, "--configfile", str(configfile),
        "--jobs", "4", "--slurm-init-seconds-before-status-checks", "2", "--verbose",
        profile=SLURM_PROFILE,
    )  # fmt: skip
    return {"run": run, "root": root, "slides": slides}


def test_each_batch_of_slides_is_one_slurm_job_with_one_encoder_load(batch_run: dict) -> None:
    out, root = batch_run["run"].stdout, batch_run["root"]
    assert batch_run["run"].returncode != 0, "the two broken slides must fail the run"
    calls = sbatch_calls(out)
    batches = batches_of_two(batch_run["slides"])
    assert len(batches) < len(batch_run["slides"])  # batches of two, a patient together
    for rule in ("features_batch", "slide_predict_batch"):
        jobs = [c for c in calls if f"'{rule}:batch=" in c]
        assert len(jobs) == len(batches), (rule, out[-3000:])  # one job per batch, no retry
        for call in jobs:  # builtin:tiny and the demo slide model: no GPU
            assert "--gpus" not in call and "--gres" not in call
            assert re.search(r" --mem \d+ ", call) and re.search(r" -t \d+ ", call)
        logs = sorted((root / "batch_logs" / rule).glob("b*.log"))
        assert len(logs) == len(batches)
        for log in logs:
            assert log.read_text().count("batch: loaded ") == 1, log.read_text()
    # The per-slide steps that put files in place run on the submitting host.
    for rule in ("features", "slide_predict"):
        assert not [c for c in calls if f"'{rule}:patient=" in c]


def test_a_broken_slide_fails_alone_in_its_batch_on_the_cluster(batch_run: dict) -> None:
    results = batch_run["root"] / "batch_results"
    with open(results / "features.tsv", newline="") as fh:
        features = {r["slide"]: r for r in csv.DictReader(fh, delimiter="\t")}
    with open(results / "predictions.tsv", newline="") as fh:
        predictions = {r["slide"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert features["P2_corrupt"]["status"] == "failed"
    assert "corrupt or truncated tile" in features["P2_corrupt"]["error"]
    assert features["P3_bad"]["status"] == "not run"  # its level selection failed
    for patient, slide in batch_run["slides"]:
        if slide in ("P2_corrupt", "P3_bad"):
            assert predictions[slide]["status"] == "not run"
            continue
        assert features[slide]["status"] == "ok", features[slide]
        assert predictions[slide]["status"] in ("ok", "flagged"), predictions[slide]
        assert (results / patient / slide / "attention.csv").is_file()


def test_file_encoder_batch_asks_for_a_gpu(slurm: Path, cohort: dict) -> None:
    """A TorchScript encoder with features.device auto: the batch job asks for one GPU (this
    GPU-less cluster refuses it at submission, so only the request is checked)."""
    pytest.importorskip("torch")
    from _encoders import MeanColour, seeded, sidecar, write_encoder

    root = cohort["root"]
    encoder = write_encoder(root / "enc.pt", seeded(MeanColour, 8), sidecar("mean", 32, 8))
    gpu_config = root / "features_gpu.yaml"
    gpu_config.write_text(
        yaml.safe_dump(
            {
                "features": {"encoder": str(encoder), "device": "auto", "slides_per_job": 2},
                "gpu_jobs": {"partition": "main", "gpu_model": "a100"},
            }
        )
    )
    target = str(root / "fgpu_results" / ".batches" / "features" / "b1.tsv")
    run = snakemake(
        root, target, "--configfile", str(cohort["configfile"]), str(gpu_config),
        "--config", f"outdir={root / 'fgpu_results'}", f"logdir={root / 'fgpu_logs'}",
        "--jobs", "2", "--slurm-init-seconds-before-status-checks", "2", "--verbose",
        profile=SLURM_PROFILE,
    )  # fmt: skip
    assert run.returncode != 0
    calls = sbatch_calls(run.stdout)
    assert len(calls) == 3, run.stdout[-3000:]  # the first attempt and two retries
    for attempt, call in enumerate(calls, 1):
        assert "'features_batch:batch=b1'" in call
        assert "--gpus=a100:1" in call and " -p main " in call
        assert f" --mem {8000 * attempt} " in call
