"""A slide model's outputs: ``slide.json``, ``attention.csv`` and its ``attention.json`` record.

``attention.csv`` follows the ``windows.csv`` contract (:mod:`wsiproc.table`) with one value
column per attention head, and ``attention.json`` is a :class:`~wsiproc.record.WindowsRecord`
of the grid rebuilt from the h5 (:func:`~wsiproc.slidemodel.features.grid_cells`), so
``wsiproc heatmap``, its GeoJSON and ``wsiproc view`` read them unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_write
from ..record import WindowsRecord
from ..table import CHUNK_ROWS, format_rows, header
from .features import FeatureHeader, GridCells
from .model import SlideModel, SlideOutput

SLIDE_FORMAT = "wsiproc-slide-prediction/1"
NO_PATCHES = "no_patches"
OFF_TISSUE_FLAG = "attention_off_tissue"
OFF_TISSUE_BELOW = 0.5
"""Windows with a tissue fraction below this count as ink/background for the attention QC."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array.

    Examples
    --------
    >>> softmax(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    z = np.exp(logits - logits.max())
    return z / z.sum()


def attention_weights(scores: np.ndarray) -> np.ndarray:
    """Per-head weights summing to 1: the scores if all >= 0, else their softmax over patches.

    Examples
    --------
    >>> attention_weights(np.array([[1.0], [3.0]])).ravel().tolist()
    [0.25, 0.75]
    """
    out = np.empty_like(scores, dtype=np.float64)
    for k in range(scores.shape[1]):
        s = scores[:, k]
        if (s >= 0).all() and s.sum() > 0:
            out[:, k] = s / s.sum()
        else:
            out[:, k] = softmax(s)
    return out


def off_tissue_share(scores: np.ndarray, tissue: np.ndarray) -> list[float] | None:
    """Share of each head's attention mass on windows with tissue < :data:`OFF_TISSUE_BELOW`;
    None when the features carry no tissue fractions.

    Examples
    --------
    >>> off_tissue_share(np.array([[1.0], [3.0]]), np.array([0.2, 0.9]))
    [0.25]
    """
    if scores.shape[0] == 0 or np.isnan(tissue).any():
        return None
    weights = attention_weights(scores)
    off = tissue < OFF_TISSUE_BELOW
    return [float(weights[off, k].sum()) for k in range(weights.shape[1])]


@dataclass(frozen=True)
class Prediction:
    """What ``slide.json`` says about one slide (see :meth:`to_dict`).

    ``output`` is None for a slide without patches (N = 0, e.g. glass only): the model is not
    run, logits and probabilities are null and the slide gets the QC flag ``no_patches``.
    """

    slide_id: str
    patient: str
    model: SlideModel
    output: SlideOutput | None
    n_patches: int
    features: str
    off_tissue: list[float] | None
    attention_threshold: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``slide.json``."""
        spec = self.model.spec
        logits = None if self.output is None else self.output.logits
        probs = softmax(logits) if logits is not None and spec.task == "classification" else None
        flags = []
        if self.output is None:
            flags.append(NO_PATCHES)
        if self.off_tissue is not None and max(self.off_tissue) > self.attention_threshold:
            flags.append(OFF_TISSUE_FLAG)
        k = 1 if self.output is None else self.output.attention.shape[1]
        return {
            "format": SLIDE_FORMAT,
            "wsiproc_version": __version__,
            "slide_id": self.slide_id,
            "patient": self.patient,
            "features": self.features,
            "model": spec.name,
            "model_source": self.model.source,
            "model_sha256": self.model.sha256,
            "task": spec.task,
            "classes": list(spec.classes),
            "logits": None if logits is None else [float(v) for v in logits],
            "probabilities": None if probs is None else [float(p) for p in probs],
            "predicted_class": None if probs is None else spec.classes[int(np.argmax(probs))],
            "n_patches": self.n_patches,
            "attention_heads": self.model.head_names(k),
            "attention_off_tissue_share": self.off_tissue,
            "attention_threshold": self.attention_threshold,
            "qc_flags": flags,
        }

    def write(self, path: str | Path) -> None:
        """Write ``slide.json`` atomically."""
        with atomic_write(path) as fh:
            json.dump(self.to_dict(), fh, indent=1)
            fh.write("\n")


def attention_record(
    head: FeatureHeader, cells: GridCells, *, heads: list[str], slide_id: str, patient: str,
    model: str,
) -> WindowsRecord:  # fmt: skip
    """The ``attention.json`` record: the h5's grid as ``wsiproc infer`` would have recorded it."""
    return WindowsRecord(
        grid_rows=cells.grid_rows,
        grid_cols=cells.grid_cols,
        kernel_size=head.patch_size,
        stride=head.stride,
        proc_mpp=head.proc_mpp,
        scale=head.scale,
        outputs=tuple(heads),
        output_names=tuple(heads),
        output_shape=(len(heads),),
        wsiproc_version=__version__,
        slide=None,  # the h5 does not record the slide file; slide_id names it
        slide_id=slide_id,
        patient=patient,
        level=head.level,
        border="valid",
        l0_width=head.l0_width,
        l0_height=head.l0_height,
        windows_total=cells.grid_rows * cells.grid_cols,
        windows_processed=head.n,
        windows_skipped=cells.grid_rows * cells.grid_cols - head.n,
        model=model,
        proc_x0=cells.proc_x0,
        proc_y0=cells.proc_y0,
    )


def write_attention_csv(
    path: str | Path,
    head: FeatureHeader,
    cells: GridCells,
    scores: np.ndarray,
    *,
    heads: list[str],
    slide_id: str,
    patient: str,
) -> None:
    """Write ``attention.csv`` atomically, rows sorted by (row, col) as the contract says."""
    order = np.lexsort((cells.cols, cells.rows))
    side = head.patch_size_level0
    boxes = np.empty((head.n, 4), dtype=np.int64)
    boxes[:, :2] = head.coords
    boxes[:, 2:] = side
    with atomic_write(path) as fh:
        fh.write(",".join(header(heads)) + "\n")
        for a in range(0, head.n, CHUNK_ROWS):
            idx = order[a : a + CHUNK_ROWS]
            fh.write(
                format_rows(
                    patient, slide_id, cells.rows[idx], cells.cols[idx], boxes[idx],
                    head.level, head.tissue[idx], scores[idx],
                )
            )  # fmt: skip
