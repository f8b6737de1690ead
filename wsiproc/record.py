"""``windows.json``: the run record of one ``wsiproc infer``, typed, read and written here only.

The engine writes it beside ``windows.csv``; the heatmap and QC stages read it. Keeping the
schema in one dataclass means a zero-window run (grid 0×0, nothing processed) is a valid
record that every later stage handles, instead of a key some reader rejects.

Geometry and outputs are required (the heatmap cannot work without them); the run's
bookkeeping (timings, reader, device, read errors) is optional, so records written by older
versions and hand-made test records still load.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .errors import InputTableError

WINDOWS_FORMAT = "wsiproc-windows/1"


def record_path(csv_path: str | Path) -> Path:
    """``windows.csv`` -> ``windows.json``."""
    return Path(csv_path).with_suffix(".json")


@dataclass(frozen=True)
class ReadErrors:
    """Regions that could not be decoded under ``--on-read-error skip``.

    ``windows`` counts the windows that got NaN outputs; ``regions`` lists
    ``{"level", "x", "y", "width", "height", "problem"}`` in level pixels, capped at
    :data:`MAX_REGIONS` (the count stays exact).
    """

    windows: int = 0
    regions: tuple[dict[str, Any], ...] = ()


MAX_REGIONS = 1000
"""Read-error regions listed in ``windows.json``; a wholly corrupt slide would list millions."""


@dataclass(frozen=True)
class WindowsRecord:
    """Everything ``windows.json`` holds; sizes in processing pixels unless named ``l0_``.

    ``outputs`` are the CSV value columns in order, ``output_names`` the C base names and
    ``output_shape`` ``(C,)`` or ``(C, h, w)``. ``path`` is where the record was read from
    (for messages), not part of the file. ``l0_bounds_*`` is the area the grid covers (the
    slide's OpenSlide bounds, or the whole slide), ``proc_x0, proc_y0`` the grid's origin in
    processing pixels; ``reader_reason`` says why the probe chose ``reader``. ``device`` is
    ``cpu``, ``cuda:K`` (``cuda`` before issue 9) or ``collector``; ``gpu`` the physical id
    of ``cuda:K`` (UUID, or its ``CUDA_VISIBLE_DEVICES`` entry). ``tissue_source`` is where
    the ``tissue`` column came from (``mask``, ``thumbnail``, or ``none``: then
    ``tissue_unknown`` is true, the column NaN and ``tissue_unknown_reason`` says why).
    """

    grid_rows: int
    grid_cols: int
    kernel_size: int
    stride: int
    proc_mpp: float | None
    scale: float
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_shape: tuple[int, ...]
    path: str = ""
    format: str = WINDOWS_FORMAT
    wsiproc_version: str | None = None
    slide: str | None = None
    slide_id: str | None = None
    patient: str | None = None
    level: int | None = None
    level_downsample: float | None = None
    resize_factor: float | None = None
    border: str | None = None
    min_tissue: float | None = None
    max_ink: float | None = None
    tissue_source: str | None = None
    tissue_unknown: bool = False
    tissue_unknown_reason: str | None = None
    proc_width: int | None = None
    proc_height: int | None = None
    l0_width: int | None = None
    l0_height: int | None = None
    windows_total: int | None = None
    windows_processed: int | None = None
    windows_skipped: int | None = None
    model: str | None = None
    model_mpp: float | None = None
    model_input_size: int | None = None
    reader: str | None = None
    reader_reason: str | None = None
    proc_x0: int | None = None
    proc_y0: int | None = None
    l0_bounds_x: int | None = None
    l0_bounds_y: int | None = None
    l0_bounds_width: int | None = None
    l0_bounds_height: int | None = None
    device: str | None = None
    gpu: str | None = None
    precision: str | None = None
    compiled: dict[str, Any] | None = None
    mpp_source: str | None = None
    read_errors: ReadErrors = field(default_factory=ReadErrors)
    elapsed_s: float | None = None
    windows_per_s: float | None = None
    stream_windows_per_s: float | None = None
    resumed_windows: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def block_shape(self) -> tuple[int, int]:
        """(height, width) in raster pixels of one window's map; (1, 1) for vector outputs."""
        if len(self.output_shape) == 3:
            return self.output_shape[1], self.output_shape[2]
        return 1, 1

    @property
    def is_spatial(self) -> bool:
        """Whether each window's output is a C×h×w map rather than a C-vector."""
        return len(self.output_shape) == 3

    @property
    def l0_origin(self) -> tuple[int, int]:
        """Level-0 ``(x, y)`` of the bounds' corner: (0, 0) in the frame viewers such as QuPath
        show (they crop a slide to its bounds); (0, 0) for records without bounds."""
        return self.l0_bounds_x or 0, self.l0_bounds_y or 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (without ``path``)."""
        data = asdict(self)
        del data["path"]
        data["read_errors"] = {
            "windows": self.read_errors.windows,
            "regions": list(self.read_errors.regions),
        }
        for key in ("outputs", "output_names", "output_shape"):
            data[key] = list(data[key])
        return data

    def write(self, path: str | Path) -> None:
        """Write atomically (the file appears whole or not at all)."""
        with atomic_write(path) as fh:
            json.dump(self.to_dict(), fh, indent=1)


_REQUIRED = ("grid_rows", "grid_cols", "kernel_size", "stride", "scale", "output_shape")
_INT_KEYS = frozenset(
    {
        "level", "proc_width", "proc_height", "l0_width", "l0_height", "windows_total",
        "windows_processed", "windows_skipped", "resumed_windows", "model_input_size",
        "proc_x0", "proc_y0", "l0_bounds_x", "l0_bounds_y", "l0_bounds_width", "l0_bounds_height",
    }
)  # fmt: skip
_FLOAT_KEYS = frozenset(
    {
        "level_downsample", "resize_factor", "min_tissue", "elapsed_s", "windows_per_s",
        "stream_windows_per_s", "model_mpp", "max_ink",
    }
)  # fmt: skip


def read_record(path: str | Path) -> WindowsRecord:
    """Read and check ``windows.json``.

    Raises
    ------
    InputTableError
        The file is missing, not JSON, lacks a key, or its outputs are inconsistent.
    """
    path = Path(path)
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputTableError(where, exc.strerror or str(exc)) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputTableError(where, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputTableError(where, "not a windows JSON object")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def count(key: str, minimum: int) -> int:
        value = data.get(key)
        if not is_int(value) or value < minimum:
            kind = "a positive integer" if minimum else "an integer >= 0"
            raise InputTableError(where, f"key {key!r} must be {kind}")
        return value

    def names(key: str) -> tuple[str, ...]:
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputTableError(where, f"key {key!r} must be a list of names")
        return tuple(value)

    def number(key: str, *, positive: bool, optional: bool) -> float | None:
        value = data.get(key)
        if value is None and optional:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InputTableError(where, f"key {key!r} must be a number")
        if positive and value <= 0:
            raise InputTableError(where, f"key {key!r} must be a positive number")
        return float(value)

    for key in _REQUIRED:
        if key not in data:
            raise InputTableError(where, f"missing key {key!r}")
    shape = data.get("output_shape")
    if (
        not isinstance(shape, list)
        or len(shape) not in (1, 3)
        or not all(is_int(s) and s >= 1 for s in shape)
    ):
        raise InputTableError(where, "key 'output_shape' must be [C] or [C, h, w]")
    values: dict[str, Any] = {
        "grid_rows": count("grid_rows", 0),
        "grid_cols": count("grid_cols", 0),
        "kernel_size": count("kernel_size", 1),
        "stride": count("stride", 1),
        "proc_mpp": number("proc_mpp", positive=True, optional=True),
        "scale": number("scale", positive=True, optional=False),
        "outputs": names("outputs"),
        "output_names": names("output_names"),
        "output_shape": tuple(shape),
        "path": where,
    }
    known = {f.name for f in fields(WindowsRecord)}
    for key, value in data.items():
        if key in values or key not in known or value is None:
            continue
        if key in _INT_KEYS:
            values[key] = count(key, 0) if key != "level" else int(value)
        elif key in _FLOAT_KEYS:
            values[key] = number(key, positive=False, optional=True)
        elif key == "read_errors":
            values[key] = _read_errors(value, where)
        elif key == "tissue_unknown":
            values[key] = value is True
        elif key == "timings_s":
            values[key] = dict(value) if isinstance(value, dict) else {}
        else:
            values[key] = str(value)
    record = WindowsRecord(**values)
    if len(record.output_names) != shape[0] or len(record.outputs) != math.prod(shape):
        problem = (
            f"{len(record.outputs)} outputs and {len(record.output_names)} output names "
            f"do not match output_shape {shape}"
        )
        raise InputTableError(where, problem)
    return record


def _read_errors(value: Any, where: str) -> ReadErrors:
    """The ``read_errors`` object, checked."""
    if not isinstance(value, dict):
        raise InputTableError(where, "key 'read_errors' must be an object")
    windows = value.get("windows", 0)
    regions = value.get("regions", [])
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
        raise InputTableError(where, "key 'read_errors.windows' must be an integer >= 0")
    if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise InputTableError(where, "key 'read_errors.regions' must be a list of objects")
    return ReadErrors(windows, tuple(regions))
