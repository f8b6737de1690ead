"""The slide model's prediction of one slide (``slide.json``), as the viewer's side panel shows it.

Read with the QC stage's own summary (:func:`wsiproc.qc.stages.prediction_summary`), so the
panel, ``qc.html`` and the report say the same; a broken ``slide.json`` becomes a line in the
panel, never a failed page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import WsiprocError
from ..qc.stages import prediction_summary


@dataclass(frozen=True)
class SlidePrediction:
    """Model, predicted class, one (class, value) per class, and the attention check."""

    model: str | None
    predicted_class: str | None
    values: tuple[tuple[str, float | None], ...]
    task: str
    off_tissue: float | None
    flagged: bool
    error: str | None = None


def read_prediction(path: Path) -> SlidePrediction | None:
    """The prediction in ``path``; None when the slide has no ``slide.json``."""
    if not path.is_file():
        return None
    try:
        s = prediction_summary(path)
    except WsiprocError as exc:
        return SlidePrediction(None, None, (), "", None, False, error=str(exc))
    values = s["values"] or [None] * len(s["classes"])
    return SlidePrediction(
        model=s["model"],
        predicted_class=s["predicted_class"],
        values=tuple(zip(s["classes"], values, strict=True)),
        task=s["task"],
        off_tissue=s["attention_off_tissue"],
        flagged="attention_off_tissue" in s["flags"],
    )
