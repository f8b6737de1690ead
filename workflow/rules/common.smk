# The workflow's only Python. In this order, once each: validate the config, read and
# validate the sample sheet, build the per-slide lookups and wildcard constraints, define the
# get_* helpers, the resources and cluster groups, and the end-of-run summary. Rules never import wsiproc; they call its CLI, one stage per rule
# (the config check of a model's resolution borrows wsiproc's own function, not a copy).
import atexit
import importlib.metadata
import inspect
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import pandas as pd
import yaml
from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# 1. Config ---------------------------------------------------------------------------
# Level spec key in config -> flag of `wsiproc level`.
LEVEL_FLAGS = {
    "mpp": "--mpp",
    "magnification": "--magnification",
    "level": "--level",
    "function": "--level-function",
}


def error_line(error):
    """One line from a jsonschema error: the key path and what is wrong there."""
    key = ".".join(map(str, error.absolute_path)) or "(top level)"
    if error.validator == "oneOf":
        return f"{key}: give exactly one of {', '.join(LEVEL_FLAGS)} (the others null)"
    return f"{key}: {error.message}"


def schema_problem(exc):
    """One line from a failed snakemake.utils.validate: the error it wraps, as above."""
    causes = [*exc.args, exc.__cause__, exc.__context__]
    error = next((c for c in causes if isinstance(c, jsonschema.ValidationError)), None)
    return str(exc).splitlines()[0] if error is None else error_line(error)


# Fills the schema defaults; unknown keys and bad values stop here, before any job runs.
try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as exc:
    raise WorkflowError(f"invalid config: {schema_problem(exc)}") from None

# Every rule gets this as a param, so a new wsiproc release reruns everything it touched
# instead of leaving results from old code in place.
try:
    WSIPROC_VERSION = importlib.metadata.version("wsiproc")
except importlib.metadata.PackageNotFoundError:
    raise WorkflowError(
        "wsiproc is not installed in the Python that runs Snakemake: pip install -e ."
    ) from None


# A model that declares its training resolution (sidecar "mpp") must be run at it: a fixed
# level.mpp is checked here, before any job; other level choices per slide, by infer.
if config["level"]["mpp"] is not None and not config["model"]["allow_mpp_mismatch"]:
    from wsiproc.errors import WsiprocError
    from wsiproc.models import check_mpp, declared_mpp

    try:
        check_mpp(
            config["model"]["path"],
            declared_mpp(config["model"]["path"]),
            float(config["level"]["mpp"]),
            "every slide",
        )
    except WsiprocError as exc:
        raise WorkflowError(f"invalid config: model.path: {exc}") from None


# The colormap's name is checked against matplotlib's registry here, before any job, since the
# schema cannot list every name matplotlib knows.
from wsiproc.colormap import check_colormap
from wsiproc.errors import WsiprocError

try:
    check_colormap(config["heatmap"]["colormap"], key="heatmap.colormap")
except WsiprocError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None


pathvars:
    results=config["outdir"],
    logs=config["logdir"],
    benchmarks="<logs>/benchmarks",


# 2. Sample sheet ---------------------------------------------------------------------
SHEET = config["samples"]
if not os.path.isfile(SHEET):
    raise WorkflowError(f"config samples: sample sheet {SHEET} does not exist")

# Ids stay strings ("007", "NA"); only empty mpp cells become missing values.
samples = pd.read_csv(
    SHEET,
    sep="\t",
    dtype={"patient": str, "slide": str, "path": str},
    keep_default_na=False,
    na_values={"mpp": [""]},
)


def sheet_problem(frame):
    """The first row breaking the sheet schema, as `, data row N: key: problem`, or None.

    One validator for all rows (Snakemake's validate() builds one per row: about twice as
    slow on a 10,000-slide sheet); empty mpp cells are left out, as the schema expects.
    """
    with open(os.path.join(workflow.basedir, "schemas", "samples.schema.yaml")) as f:
        validator = jsonschema.Draft202012Validator(yaml.safe_load(f))
    for number, row in enumerate(frame.to_dict("records"), 1):
        row = {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}
        error = next(validator.iter_errors(row), None)
        if error is not None:
            return f", data row {number}: {error_line(error)}"
    return None


# Checked once, by the Snakemake that plans the run; the Snakemake inside each cluster job
# gets the same sheet and skips the checks (it must not stat every slide of the cohort).
problem = sheet_problem(samples) if workflow.is_main_process else None
if problem:
    raise WorkflowError(f"sample sheet {SHEET}{problem}")

if samples.empty:
    raise WorkflowError(f"sample sheet {SHEET} lists no slides")
if "mpp" not in samples.columns:
    samples["mpp"] = float("nan")

duplicated = samples.loc[samples["slide"].duplicated(), "slide"].unique()
if len(duplicated):
    raise WorkflowError(
        f"sample sheet {SHEET}: slide ids must be unique, repeated: {', '.join(duplicated)}"
    )

# Slide paths are relative to the sheet's directory (absolute paths stay as they are).
SHEET_DIR = os.path.dirname(SHEET)
samples["path"] = [
    os.path.normpath(os.path.join(SHEET_DIR, p)) for p in samples["path"]
]
samples = samples.set_index("slide", drop=False)

missing = samples.loc[
    [workflow.is_main_process and not os.path.isfile(p) for p in samples["path"]]
]
if len(missing):
    first = missing.iloc[0]
    more = f" (and {len(missing) - 1} more slides)" if len(missing) > 1 else ""
    raise WorkflowError(
        f"sample sheet {SHEET}: slide {first['slide']}: file not found: {first['path']}{more}"
    )


# 3. Per-slide lookups, built once: the DAG asks for them thousands of times ----------
SLIDE_PATH = dict(zip(samples["slide"], samples["path"]))
# `--slide-mpp M` of each slide (or nothing), formatted once rather than per job.
SLIDE_MPP_FLAG = {
    slide: "" if pd.isna(mpp) else f"--slide-mpp {float(mpp)!r}"
    for slide, mpp in zip(samples["slide"], samples["mpp"])
}
PATIENT_SLIDES = samples.groupby("patient", sort=False)["slide"].agg(list).to_dict()


# Ids as the sheet schema allows them. Not the sheet's ids themselves: an alternation of
# every id is copied into every path pattern and rescanned for each job (quadratic in the
# cohort size); the inputs below already resolve only the sheet's slides.
wildcard_constraints:
    patient="[A-Za-z0-9._-]+",
    slide="[A-Za-z0-9._-]+",


# 4. Helpers ---------------------------------------------------------------------------
def per_job(func):
    """Mark a function that Snakemake calls for every job (input, param or resource).

    Snakemake looks up which arguments a function takes (inspect.signature) on every call,
    twice per job and function: at 1,000 slides a ninth of the planning time (cProfile).
    Recording the signature once, with Snakemake's own hook for wrapped functions, skips it.
    """
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


def get_final_outputs():
    """Targets of the default rule: per slide one output of each last job (heatmap, qc and,
    when enabled, features and attention heatmap), patient CSVs and the cohort tables.

    One file per job is enough: a job in the DAG reruns when any of its outputs is missing.
    Every output would triple the default rule's inputs, which Snakemake checks and formats
    (three times per dry run) like any job's.
    """
    per_slide = {"patient": list(samples["patient"]), "slide": list(samples["slide"])}
    markers = [rules.heatmap.output.tif, rules.qc.output.json]
    tables = [*rules.report.output]
    if config["features"]["enabled"]:
        markers.append(rules.features.output.h5)
        tables.append(rules.features_table.output.tsv)
    if config["slide_model"]["enabled"]:
        markers.append(rules.attention_heatmap.output.rgb)
        tables.extend(rules.predictions.output)
    return [
        *(path for marker in markers for path in expand(marker, zip, **per_slide)),
        *expand(rules.patient_csv.output.csv, patient=list(PATIENT_SLIDES)),
        *tables,
    ]


def get_features_outputs(wildcards=None):
    """Targets of `features_all`: every slide's features (and exports) and features.tsv."""
    per_slide = {"patient": list(samples["patient"]), "slide": list(samples["slide"])}
    return [
        *expand(list(rules.features.output), zip, **per_slide),
        rules.features_table.output.tsv,
    ]


@per_job
def get_all_slide_predictions(wildcards):
    """slide.json of every slide, in sheet order (written last by slide_predict)."""
    return expand(
        rules.slide_predict.output.json,
        zip,
        patient=list(samples["patient"]),
        slide=list(samples["slide"]),
    )


@per_job
def get_all_features(wildcards):
    """features.json of every slide, in sheet order (written after its features.h5)."""
    return expand(
        rules.features.output.meta,
        zip,
        patient=list(samples["patient"]),
        slide=list(samples["slide"]),
    )


@per_job
def get_slide(wildcards):
    """The slide file of one sheet row."""
    try:
        return SLIDE_PATH[wildcards.slide]
    except KeyError:
        raise WorkflowError(
            f"slide {wildcards.slide} is not in the sample sheet {SHEET}"
        ) from None


def level_spec():
    """The `wsiproc level` flag naming the processing resolution, e.g. `--mpp 0.5`, and
    `--allow-upsampling` when level.allow_upsampling is set."""
    spec = config["level"]
    key = next(k for k in LEVEL_FLAGS if spec[k] is not None)
    upsampling = " --allow-upsampling" if spec["allow_upsampling"] else ""
    return f"{LEVEL_FLAGS[key]} {shlex.quote(str(spec[key]))}{upsampling}"


def level_function_files():
    """A `path.py:func` level chooser as input, so editing it reruns select_level."""
    function = config["level"]["function"]
    if function is None:
        return []
    source = function.rpartition(":")[0]
    return [source] if source.endswith(".py") else []


@per_job
def get_slide_mpp(wildcards):
    """`--slide-mpp M` from the sheet's mpp cell (overrides the slide's metadata), or nothing."""
    return SLIDE_MPP_FLAG[wildcards.slide]


def fallback_mpp():
    """`--fallback-mpp M` from level.fallback_mpp (slides without metadata), or nothing."""
    mpp = config["level"]["fallback_mpp"]
    return "" if mpp is None else f"--fallback-mpp {float(mpp)!r}"


def model_files():
    """A model file and its sidecar (as wsiproc picks it) as inputs: a new model reruns infer."""
    model = config["model"]["path"]
    if model.startswith("builtin:"):
        return []
    # wsiproc's sidecar rule: model.pt.json, else model.json; the first that exists wins.
    sidecars = [f"{model}.json", f"{os.path.splitext(model)[0]}.json"]
    return [model, *[p for p in sidecars if os.path.isfile(p)][:1]]


def features_encoder_files():
    """The encoder file and its sidecar as inputs: a new encoder reruns the features jobs."""
    encoder = config["features"]["encoder"]
    if encoder.startswith("builtin:"):
        return []
    sidecars = [f"{encoder}.json", f"{os.path.splitext(encoder)[0]}.json"]
    return [encoder, *[p for p in sidecars if os.path.isfile(p)][:1]]


def slide_model_files():
    """The slide model file and its sidecar as inputs: a new model reruns slide_predict."""
    model = config["slide_model"]["model"]
    if model.startswith("builtin:"):
        return []
    sidecars = [f"{model}.json", f"{os.path.splitext(model)[0]}.json"]
    return [model, *[p for p in sidecars if os.path.isfile(p)][:1]]


def features_options():
    """Flags of `wsiproc features` for the optional features.* keys that are set, e.g.
    `--mpp 0.5 --precision bf16`; unset ones come from the encoder's sidecar."""
    keys = ("patch_size", "stride", "mpp", "precision")
    options = config["features"]
    return " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(options[k]))}"
        for k in keys
        if options[k] is not None
    )


# Files each export writes under {slide}/ (wsiproc/features/export.py), as rule outputs.
EXPORT_FILES = {
    "stamp": ["stamp/{slide}.h5"],
    "slideflow": [
        "slideflow/{slide}.pt",
        "slideflow/{slide}.index.npz",
        "slideflow/bags_config.json",
    ],
    "clam": ["clam/pt_files/{slide}.pt", "clam/h5_files/{slide}.h5"],
}


def features_export_outputs():
    """The export files of one slide, as output patterns."""
    return [
        f"<results>/{{patient}}/{{slide}}/{name}"
        for tool in config["features"]["exports"]
        for name in EXPORT_FILES[tool]
    ]


def features_exports():
    """`--export TOOL` for each of features.exports."""
    return " ".join(f"--export {tool}" for tool in config["features"]["exports"])


def mpp_mismatch():
    """`--allow-mpp-mismatch` when model.allow_mpp_mismatch is set, else nothing."""
    return "--allow-mpp-mismatch" if config["model"]["allow_mpp_mismatch"] else ""


def heatmap_output():
    """`--output NAME` when heatmap.output is set, else nothing (the first output)."""
    name = config["heatmap"]["output"]
    return "" if name is None else f"--output {shlex.quote(name)}"


def heatmap_limit(key):
    """`--vmin V` / `--vmax V` when heatmap.vmin / vmax is set, else nothing (the data's)."""
    value = config["heatmap"][key]
    return "" if value is None else f"--{key} {float(value)!r}"


# Config-derived values are the same for every job: computed once here, they reach the
# rules as plain params (a function per job would be called and inspected per job).
LEVEL_SPEC = level_spec()
LEVEL_FUNCTION_FILES = level_function_files()
FALLBACK_MPP = fallback_mpp()
MODEL_FILES = model_files()
MPP_MISMATCH = mpp_mismatch()
FEATURES_ENCODER_FILES = features_encoder_files()
FEATURES_OPTIONS = features_options()
FEATURES_EXPORT_OUTPUTS = features_export_outputs()
FEATURES_EXPORTS = features_exports()
SLIDE_MODEL_FILES = slide_model_files()
SLIDE_MODEL_ENCODER_FLAG = (
    "--allow-encoder-mismatch"
    if config["slide_model"]["allow_encoder_mismatch"]
    else ""
)
SLIDE_MODEL_HEAD = (
    f"--output {config['slide_model']['heads']}"
    if config["slide_model"]["heads"]
    else ""
)
# A slide model needs features: either key turns the features stage on.
FEATURES_ON = bool(config["features"]["enabled"] or config["slide_model"]["enabled"])
# `wsiproc report` / `status` check the optional stages of the run too.
COHORT_STAGE_FLAGS = [
    *(["--features"] if FEATURES_ON else []),
    *(["--slide-model"] if config["slide_model"]["enabled"] else []),
]
HEATMAP_OUTPUT = heatmap_output()
HEATMAP_VMIN = heatmap_limit("vmin")
HEATMAP_VMAX = heatmap_limit("vmax")


def command_args(*args):
    """The non-empty ones of `args` as one string: flags with values (`--stride 224`) and
    composed flags (LEVEL_SPEC, ...) that every job of a rule passes alike.

    Composed once, they are one param and one field of the shell command of each of those
    rules. Snakemake formats every field of a command three times per job while planning (a
    dry run too), and one field per flag made the workflow's planning grow further from a
    bare Snakefile's. As a param the string still reruns the jobs when any value changes.
    """
    return " ".join(arg for arg in args if arg)


def option(flag, value):
    """`flag value`, the value shell-quoted (a path or name may hold spaces)."""
    return f"{flag} {shlex.quote(str(value))}"


WINDOW = config["window"]
SELECT_LEVEL_ARGS = command_args(
    option("--on-read-error", WINDOW["on_read_error"]),
    LEVEL_SPEC,
    FALLBACK_MPP,
)
INFER_ARGS = command_args(
    option("--kernel-size", WINDOW["kernel_size"]),
    option("--stride", WINDOW["stride"]),
    option("--border", WINDOW["border"]),
    option("--min-tissue", WINDOW["min_tissue"]),
    option("--max-ink", WINDOW["max_ink"]),
    option("--on-read-error", WINDOW["on_read_error"]),
    option("--model", config["model"]["path"]),
    option("--precision", config["model"]["precision"]),
    "--compile" if config["model"]["compile"] else "",
    MPP_MISMATCH,
)
HEATMAP_ARGS = command_args(
    option("--mode", config["heatmap"]["mode"]),
    option("--colormap", config["heatmap"]["colormap"]),
    HEATMAP_OUTPUT,
    HEATMAP_VMIN,
    HEATMAP_VMAX,
)
QC_ARGS = command_args(
    option("--blur-threshold", config["qc"]["blur_threshold"]),
    option("--pen-threshold", config["qc"]["pen_threshold"]),
    option("--min-tissue-percent", config["qc"]["min_tissue_percent"]),
)
FEATURES_ARGS = command_args(
    option("--encoder", config["features"]["encoder"]),
    FEATURES_OPTIONS,
    option("--min-tissue", config["features"]["min_tissue"]),
    FALLBACK_MPP,
    FEATURES_EXPORTS,
    "--compile" if config["features"]["compile"] else "",
)
SLIDE_PREDICT_ARGS = command_args(
    option("--model", config["slide_model"]["model"]),
    option("--attention-threshold", config["slide_model"]["attention_threshold"]),
    SLIDE_MODEL_ENCODER_FLAG,
)
ATTENTION_HEATMAP_ARGS = command_args(
    option("--colormap", config["heatmap"]["colormap"]),
    option("--color-scale", config["slide_model"]["color_scale"]),
    SLIDE_MODEL_HEAD,
)


# Runtime knobs: these take `resources`, which makes Snakemake treat them as derived and
# leave them out of the params rerun trigger. Changing them never reruns anything.
@per_job
def get_batch_size(wildcards, resources):
    """--batch-size of infer (runtime knob)."""
    return config["model"]["batch_size"]


@per_job
def get_device(wildcards, resources):
    """--device of infer (runtime knob)."""
    return config["model"]["device"]


@per_job
def get_features_batch_size(wildcards, resources):
    """--batch-size of features (runtime knob)."""
    return config["features"]["batch_size"]


@per_job
def get_features_device(wildcards, resources):
    """--device of features (runtime knob)."""
    return config["features"]["device"]


@per_job
def get_slide_model_device(wildcards, resources):
    """--device of slide_predict (runtime knob)."""
    return config["slide_model"]["device"]


@per_job
def get_patient_windows(wildcards):
    """windows.csv of every slide of one patient, in sheet order."""
    slides = PATIENT_SLIDES[wildcards.patient]
    return expand(rules.infer.output.csv, patient=wildcards.patient, slide=slides)


@per_job
def get_all_qc(wildcards):
    """qc.json of every slide, in sheet order."""
    return expand(
        rules.qc.output.json,
        zip,
        patient=list(samples["patient"]),
        slide=list(samples["slide"]),
    )


@per_job
def get_all_heatmaps(wildcards):
    """heatmap_rgb.tif of every slide: the report counts a slide as done only with it."""
    return expand(
        rules.heatmap.output.rgb,
        zip,
        patient=list(samples["patient"]),
        slide=list(samples["slide"]),
    )


def get_all_attention_thumbnails(wildcards):
    """attention.png of every slide when the slide model is on (the report links them)."""
    if not config["slide_model"]["enabled"]:
        return []
    return expand(
        rules.attention_heatmap.output.thumbnail,
        zip,
        patient=list(samples["patient"]),
        slide=list(samples["slide"]),
    )


def get_all_features_if_enabled(wildcards):
    """features.json of every slide when features (or the slide model) are on, else none:
    the report reads them."""
    return get_all_features(wildcards) if FEATURES_ON else []


def get_all_predictions_if_enabled(wildcards):
    """slide.json of every slide when the slide model is on, else none: the report reads them."""
    return (
        get_all_slide_predictions(wildcards) if config["slide_model"]["enabled"] else []
    )


def qc_stage_records():
    """`--features-json F` / `--slide-json S` of qc for the enabled optional stages.

    The paths are the slide's file patterns: Snakemake fills a string param's wildcards in
    for each job, which costs less than a function called (and inspected) per job.
    """
    flags = []
    if FEATURES_ON:
        flags.append(f"--features-json {quote_pattern(rules.features.output.meta)}")
    if config["slide_model"]["enabled"]:
        flags.append(f"--slide-json {quote_pattern(rules.slide_predict.output.json)}")
    return " ".join(flags)


def quote_pattern(pattern):
    """A file pattern shell-quoted as its files will need: the wildcards' values are ids
    (letters, digits, `._-`: the constraints above), so only the rest of it counts."""
    plain = pattern.replace("{", "").replace("}", "")
    return pattern if shlex.quote(plain) == plain else shlex.quote(pattern)


@per_job
def get_sheet(wildcards=None):
    """The sample sheet: an input of `report` (editing it reruns the report), and `--sheet`."""
    return SHEET


@per_job
def get_outdir(wildcards=None):
    """`--results` of `wsiproc report` and `wsiproc status`: the results directory."""
    return config["outdir"]


@per_job
def get_logdir(wildcards=None):
    """`--logs` of `wsiproc report` and `wsiproc status`: the log directory."""
    return config["logdir"]


# 5. Resources and cluster groups ------------------------------------------------------
# Whether infer needs a GPU is the same for every slide: a TorchScript model not pinned to
# the CPU does (device auto may still fall back to the CPU where a node has none).
INFER_GPUS = int(
    not config["model"]["path"].startswith("builtin:")
    and config["model"]["device"] != "cpu"
)


def attempt_scaled(amount):
    """A resource that grows with each attempt: a job killed for memory (or time) is
    retried with two, then three times as much (the SLURM profile sets `retries`)."""

    @per_job
    def scaled(wildcards, attempt):
        return amount * attempt

    return scaled


# On a cluster, a slide's cheap steps run in the same job as its inference, so the
# scheduler sees one job per slide, not four. A GPU is not held while heatmap and qc run:
# with a GPU model only level selection shares the GPU job. Slides never share a job, so
# a broken slide fails alone. A single machine ignores groups.
JOB_GROUP = {
    "select_level": "slide",
    "infer": "slide",
    "heatmap": None if INFER_GPUS else "slide",
    # qc also reads features.json / slide.json, made outside the group from its level stage:
    # a group may not be left and re-entered, so then qc runs as its own job.
    "qc": None if INFER_GPUS or FEATURES_ON else "slide",
}

# The `gpu` resource of a job: claimed only by jobs that need one. A `gpu=0` resource would
# be evaluated for every job while planning, for nothing.
GPU_CLAIM = {0: {}, 1: {"gpu": 1}}

# Partition and GPU model of the GPU job (config gpu_jobs), if set; jobs of one group must
# ask for the same partition, so level selection gets it too.
GPU_JOB_RESOURCES = {
    key: config["gpu_jobs"][name]
    for key, name in (("slurm_partition", "partition"), ("gpu_model", "gpu_model"))
    if INFER_GPUS and config["gpu_jobs"][name] is not None
}
# Features jobs ask for a GPU like infer: a file encoder not pinned to the CPU.
FEATURES_GPUS = int(
    not config["features"]["encoder"].startswith("builtin:")
    and config["features"]["device"] != "cpu"
)
FEATURES_JOB_RESOURCES = {
    key: config["gpu_jobs"][name]
    for key, name in (("slurm_partition", "partition"), ("gpu_model", "gpu_model"))
    if FEATURES_GPUS and config["gpu_jobs"][name] is not None
}
FEATURES_MEM_MB = config["features"]["mem_mb"]
# Host memory of infer: a CPU run peaks near 1 GB with a ResNet-18-sized model
# (docs/performance.md); a GPU run adds the CUDA context and pinned batches.
INFER_MEM_MB = config["gpu_jobs"]["mem_mb"] if INFER_GPUS else 4000


# 6. End of run -------------------------------------------------------------------------
def print_run_summary(stage):
    """Run `wsiproc report` (after a failure), `wsiproc features-table` (after a failure, with
    features enabled) or `wsiproc status` (after success) and print
    its lines (counts, failed slides, report path) as the run's last terminal lines.

    Snakemake logs its log path, elapsed time and, after a failure, its WorkflowError after
    the onsuccess/onerror handler returns (Workflow.execute), so the lines are printed at
    interpreter exit. A failing wsiproc gives one line, never an exception in the handler.
    """
    args = ["--sheet", get_sheet(), "--results", get_outdir(), "--logs", get_logdir()]
    if stage in ("report", "status"):
        args += COHORT_STAGE_FLAGS
    if stage == "report":
        outputs = rules.report.output
        args += ["--out-html", outputs.html, "--out-tsv", outputs.tsv]
    elif stage == "features-table":
        args += ["--out", rules.features_table.output.tsv]
    elif stage == "predictions":
        outputs = rules.predictions.output
        args += ["--out", outputs.tsv, "--patients-out", outputs.patients]
    # The Python that runs Snakemake has wsiproc (checked above), whatever PATH says.
    command = [sys.executable, "-m", "wsiproc", stage, *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        lines = [f"wsiproc: {stage} did not run: {exc}"]
    else:
        lines = proc.stdout.splitlines()
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            lines.append(f"wsiproc: {stage} failed (exit {proc.returncode}): {last}")
    atexit.register(print, "\n".join(lines), flush=True)


# 7. Several slides per job (features.slides_per_job, slide_model.slides_per_job) ------
# With K > 1 a batch job runs K slides in one process that loads the encoder (or slide
# model) once, into each slide's .staged/ directory; the per-slide rule then links the
# staged files into place or fails with the slide's recorded error (wsiproc/batch/).
# Batches are assigned by wsiproc (consecutive, a patient's slides together), once here.
from wsiproc.batch.assign import batch_members

FEATURES_PER_JOB = config["features"]["slides_per_job"]
SLIDE_MODEL_PER_JOB = config["slide_model"]["slides_per_job"]
SLIDE_MODEL_BATCHED = bool(config["slide_model"]["enabled"] and SLIDE_MODEL_PER_JOB > 1)
# Slide-model batches read the staged features and the features' batch records, so the
# features run in batches (of features.slides_per_job, 1 included) when either stage does.
FEATURES_BATCHED = FEATURES_PER_JOB > 1 or SLIDE_MODEL_BATCHED
STAGED = ".staged"


def batches_of(per_job, enabled):
    """`({batch: [(patient, slide), ...]}, {slide: batch})` for one batched stage, or empty."""
    if not enabled:
        return {}, {}
    rows = list(zip(samples["patient"], samples["slide"]))
    members = {
        batch: [rows[i] for i in index]
        for batch, index in batch_members([p for p, _ in rows], per_job).items()
    }
    return members, {s: b for b, pairs in members.items() for _, s in pairs}


FEATURES_BATCHES, FEATURES_BATCH_OF = batches_of(FEATURES_PER_JOB, FEATURES_BATCHED)
SLIDE_MODEL_BATCHES, SLIDE_MODEL_BATCH_OF = batches_of(
    SLIDE_MODEL_PER_JOB, SLIDE_MODEL_BATCHED
)


def slide_path(pattern, patient, slide, staged=False):
    """A per-slide output pattern filled in; with staged, its place under .staged/."""
    path = pattern.format(patient=patient, slide=slide)
    if not staged:
        return path
    slide_dir = os.path.join(config["outdir"], patient, slide)
    return os.path.join(slide_dir, STAGED, os.path.relpath(path, slide_dir))


def batch_members_of(stage, wildcards):
    """The (patient, slide) pairs of one batch, in sheet order."""
    batches = FEATURES_BATCHES if stage == "features" else SLIDE_MODEL_BATCHES
    try:
        return batches[wildcards.batch]
    except KeyError:
        raise WorkflowError(f"{stage} batch {wildcards.batch} does not exist") from None


def item_flags(items):
    """`--pre SLIDE 'COMMAND'` and `--item SLIDE 'ARGS'` lines of `wsiproc batch`."""
    return " \\\n    ".join(
        f"--{flag} {slide} {shlex.quote(shlex.join(args))}"
        for flag, slide, args in items
    )


@per_job
def get_features_batch_slides(wildcards):
    """The slide files of one features batch."""
    return [SLIDE_PATH[s] for _, s in batch_members_of("features", wildcards)]


@per_job
def get_features_batch_items(wildcards):
    """Per slide, its level selection (`wsiproc level` as select_level runs it, into
    .staged/: a slide that cannot be opened fails in the batch, its batch mates go on) and
    its own `wsiproc features` arguments: input, staged --out and mask, ids."""
    items = []
    for patient, slide in batch_members_of("features", wildcards):
        mpp = shlex.split(SLIDE_MPP_FLAG[slide])
        level = [
            slide_path(rules.select_level.output[name], patient, slide, staged=True)
            for name in ("level", "thumbnail", "mask")
        ]
        level_command = [
            "level",
            SLIDE_PATH[slide],
            *("--out", level[0], "--thumbnail", level[1], "--mask", level[2]),
            *shlex.split(SELECT_LEVEL_ARGS),
            *mpp,
        ]
        args = [
            SLIDE_PATH[slide],
            *(
                "--out",
                slide_path(rules.features.output.h5, patient, slide, staged=True),
            ),
            *("--mask", level[2]),
            *mpp,
            *("--patient", patient, "--slide-id", slide),
        ]
        items += [("pre", slide, level_command), ("item", slide, args)]
    return item_flags(items)


@per_job
def get_features_record(wildcards):
    """The batch record of the features batch that holds this slide."""
    batch = FEATURES_BATCH_OF[wildcards.slide]
    return rules.features_batch.output.record.format(batch=batch)


@per_job
def get_slide_model_batch_features(wildcards):
    """The features batch records of one slide-model batch's slides."""
    members = batch_members_of("slide_predict", wildcards)
    batches = dict.fromkeys(FEATURES_BATCH_OF[s] for _, s in members)
    return [rules.features_batch.output.record.format(batch=b) for b in batches]


@per_job
def get_skip_failed_flags(wildcards, input):
    """`--skip-failed-in RECORD` for each features batch record of a slide-model batch."""
    return " ".join(f"--skip-failed-in {shlex.quote(r)}" for r in input.features)


@per_job
def get_slide_model_batch_items(wildcards):
    """Each slide's own `wsiproc slide-predict` arguments: staged features in, staged out."""
    items = []
    for patient, slide in batch_members_of("slide_predict", wildcards):
        args = [
            slide_path(rules.features.output.h5, patient, slide, staged=True),
            "--out",
            slide_path(rules.slide_predict.output.json, patient, slide, staged=True),
            "--attention-out",
            slide_path(rules.slide_predict.output.csv, patient, slide, staged=True),
            "--patient",
            patient,
            "--slide-id",
            slide,
        ]
        items.append(("item", slide, args))
    return item_flags(items)


@per_job
def get_slide_model_record(wildcards):
    """The batch record of the slide-model batch that holds this slide."""
    batch = SLIDE_MODEL_BATCH_OF[wildcards.slide]
    return rules.slide_predict_batch.output.record.format(batch=batch)


@per_job
def get_staged_dir(wildcards):
    """`.staged/` of one slide, where its batch job wrote its files."""
    return os.path.join(config["outdir"], wildcards.patient, wildcards.slide, STAGED)


@per_job
def get_slide_dir(wildcards):
    """The results directory of one slide."""
    return os.path.join(config["outdir"], wildcards.patient, wildcards.slide)
