"""The collector: the extension point that turns pieces of the window stream into outputs.

As in PyDmed's ``StreamCollector``, a subclass says how to process one piece of the stream
and when collecting is finished; the engine does the rest (reading, batching, checkpointing,
ordering, the CSV). Every method runs in the collector process (the process that called
``run_inference``), which also owns the model and the GPU.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelError
from ..models import Model, flat_output_names


@dataclass(frozen=True)
class StreamInfo:
    """What a collector learns before the first piece: the slide, level plan and grid."""

    slide_path: str
    slide_id: str
    patient: str
    level: int
    scale: float
    proc_mpp: float | None
    kernel_px: int
    stride_px: int
    grid_rows: int
    grid_cols: int
    windows_to_process: int


@dataclass(frozen=True)
class StreamPiece:
    """One batch of windows.

    ``pixels`` is (n, kernel, kernel, 3) uint8 RGB at the processing resolution; it is a view
    of shared memory, valid only until ``process_piece`` returns (copy what you keep).
    ``rows``/``cols`` are grid cells and ``l0_boxes`` their level-0 ``x, y, width, height``.
    ``unreadable`` (only under ``--on-read-error skip``, else None) marks windows whose pixels
    could not be decoded: they are white here and their outputs are replaced by NaN.
    """

    pixels: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    l0_boxes: np.ndarray
    unreadable: np.ndarray | None = None


class StreamCollector(abc.ABC):
    """Base class of everything that consumes the window stream.

    Subclasses set ``output_names`` (one CSV column each; for maps use
    :func:`wsiproc.table.spatial_output_names`) and implement :meth:`process_piece`.
    Instances are created in the collector process, once per slide.
    """

    output_names: Sequence[str] = ()

    def open(self, info: StreamInfo) -> None:  # noqa: B027 - optional hook, empty by design
        """Called once before the first piece; the default does nothing."""

    @abc.abstractmethod
    def process_piece(self, piece: StreamPiece) -> np.ndarray:
        """Return an (n, len(output_names)) float array: one output row per window of ``piece``.

        Rows must follow the order of ``piece.rows``/``piece.cols``. Called once per batch,
        batches of one chunk in order; must be deterministic for resumed runs to be exact.
        """

    def is_finished(self) -> bool:
        """True to stop collecting early (windows not yet processed are left out)."""
        return False

    def identity(self) -> str:
        """A string that changes whenever outputs could change (part of the resume fingerprint)."""
        return f"{type(self).__module__}.{type(self).__qualname__}"


class ModelCollector(StreamCollector):
    """The built-in collector: runs a :class:`~wsiproc.models.Model` on every window."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.output_names = flat_output_names(model)

    def process_piece(self, piece: StreamPiece) -> np.ndarray:
        out = self.model(piece.pixels)
        n = len(piece.rows)
        if out.shape[0] != n:
            raise ModelError(self.model.source, f"returned {out.shape[0]} outputs for {n} windows")
        return out.reshape(n, -1)

    def identity(self) -> str:
        return self.model.identity()


def make_collector(ref: str) -> Any:
    """Instantiate a user ``StreamCollector`` from ``module:Class`` or ``file.py:Class``."""
    from ..errors import ConfigError
    from ..level import load_callable

    cls = load_callable(ref, "collector")
    if not (isinstance(cls, type) and issubclass(cls, StreamCollector)):
        raise ConfigError("collector", f"{ref} is not a StreamCollector subclass")
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - user code
        raise ConfigError("collector", f"{ref}() failed: {exc}") from exc
