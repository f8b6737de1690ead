"""One ``wsiproc infer`` call as data, and its validation.

Its own module so that the stream's flow runs one way: the CLI builds a request, the engine
(:mod:`.engine`) orchestrates it and hands it to the pipeline (:mod:`.pipeline`); both import
the request from here and neither imports the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..level import LevelPlan, LevelSpec

ON_READ_ERROR = ("fail", "skip")
"""``fail``: the first unreadable region stops the run; ``skip``: it becomes NaN outputs."""

OUTPUTS = ("csv", "h5")
"""``csv``: ``windows.csv`` of model outputs; ``h5``: a features file of encoder embeddings
(:mod:`wsiproc.features`), ``model`` then names the encoder."""


@dataclass
class InferRequest:
    """One ``wsiproc infer`` call. Sizes in processing pixels."""

    slide: str
    out: str
    kernel_px: int
    stride_px: int
    spec: LevelSpec = field(default_factory=LevelSpec)
    plan: LevelPlan | None = None
    border: str = "valid"
    min_tissue: float = 0.25
    max_ink: float = 0.1
    model: str = "builtin:mean-rgb"
    collector: str | None = None
    workers: int = 2
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    patient: str = ""
    slide_id: str = ""
    quiet: bool = False
    reader: str = "auto"
    chunk_px: int = 2048
    threads: int | None = None
    on_read_error: str = "fail"
    mask: str | None = None
    allow_mpp_mismatch: bool = False
    output: str = "csv"
    compile_cache: str | None = None


def validate_request(req: InferRequest) -> None:
    """Reject bad parameters before any work.

    Raises
    ------
    ConfigError
        Naming the CLI flag and the value that is out of range.
    """
    if not 0.0 <= req.min_tissue <= 1.0:
        raise ConfigError("min-tissue", f"must be between 0 and 1, got {req.min_tissue}")
    if not 0.0 <= req.max_ink <= 1.0:
        raise ConfigError("max-ink", f"must be between 0 and 1, got {req.max_ink}")
    if req.workers < 1:
        raise ConfigError("workers", f"must be >= 1, got {req.workers}")
    if req.batch_size < 1:
        raise ConfigError("batch-size", f"must be >= 1, got {req.batch_size}")
    if req.chunk_px < 1:
        raise ConfigError("chunk-px", f"must be >= 1, got {req.chunk_px}")
    if req.output not in OUTPUTS:
        raise ConfigError("output", f"must be one of {', '.join(OUTPUTS)}, got {req.output!r}")
    if req.on_read_error not in ON_READ_ERROR:
        raise ConfigError(
            "on-read-error", f"must be one of {', '.join(ON_READ_ERROR)}, got {req.on_read_error!r}"
        )
