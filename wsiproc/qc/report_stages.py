"""The cohort report's columns for the optional stages: features and the slide model.

Apart from :mod:`.report` because they exist only when a run has those stages (``wsiproc report
--features`` / ``--slide-model``). The values come from the ``features`` and ``prediction``
summaries that ``wsiproc qc`` copies into ``qc.json`` (see :mod:`.stages`), so the report reads
no file more per slide than before, except the PNG header of the attention thumbnail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sortable import Column

ATTENTION_THUMBNAIL = "attention.png"
"""The attention heatmap's small PNG (``wsiproc heatmap --thumbnail-out``), beside qc.json."""

FEATURES_COLUMNS = (
    ("features_encoder", Column("Encoder")),
    ("features_patches", Column("Patches embedded", "num")),
    ("features_patches_per_s", Column("Patches/s", "num")),
)
"""(summary.tsv column, report column) of a run with features."""


@dataclass(frozen=True)
class StageColumns:
    """The extra columns of one report: TSV names and report headers, in the same order."""

    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    attention: bool

    @property
    def thumb_columns(self) -> tuple[Column, ...]:
        """The attention thumbnail's column (no sort), when the slide model ran."""
        return (Column("Attention", None),) if self.attention else ()


def _prediction_names(rows: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """(``prob_`` or ``value_``, class names) of the first slide with a prediction."""
    for row in rows:
        pred = row.get("_prediction")
        if pred:
            prefix = "prob_" if pred["task"] == "classification" else "value_"
            return prefix, list(pred["classes"])
    return "prob_", []


def stage_columns(
    rows: Sequence[dict[str, Any]], *, features: bool, slide_model: bool
) -> StageColumns:
    """The columns a run's stages add; class columns follow the first prediction's classes."""
    keys: list[str] = []
    columns: list[Column] = []
    if features or slide_model:
        keys += [k for k, _ in FEATURES_COLUMNS]
        columns += [c for _, c in FEATURES_COLUMNS]
    if slide_model:
        prefix, classes = _prediction_names(rows)
        keys.append("predicted_class")
        columns.append(Column("Predicted class"))
        for name in classes:
            keys.append(prefix + name)
            columns.append(Column(f"P({name})" if prefix == "prob_" else name, "num"))
        keys.append("attention_off_tissue")
        columns.append(Column("Attention off tissue", "num"))
    return StageColumns(tuple(keys), tuple(columns), slide_model)


def record_values(record: dict[str, Any]) -> dict[str, Any]:
    """The stage values of one ``qc.json`` (``_prediction`` keeps the summary for the class
    columns, which are known only once every row is read)."""
    values: dict[str, Any] = {}
    features = record.get("features") or {}
    values["features_encoder"] = features.get("encoder")
    values["features_patches"] = features.get("patches")
    values["features_patches_per_s"] = features.get("patches_per_s")
    pred = record.get("prediction")
    values["_prediction"] = pred
    if pred:
        values["predicted_class"] = pred.get("predicted_class")
        values["attention_off_tissue"] = pred.get("attention_off_tissue")
    return values


def class_values(row: dict[str, Any], stage: StageColumns) -> None:
    """Fill ``row``'s class columns from its prediction (None where it has none or other
    classes: a slide predicted by another model)."""
    pred = row.get("_prediction")
    names = [k for k in stage.keys if k.startswith(("prob_", "value_"))]
    values = (pred or {}).get("values") or []
    classes = (pred or {}).get("classes") or []
    same = [k.split("_", 1)[1] for k in names] == classes and len(values) == len(classes)
    for i, key in enumerate(names):
        row[key] = values[i] if same else None


def attention_thumbnail(qc_json: Path) -> Path | None:
    """The slide's ``attention.png`` beside its ``qc.json``, if it exists."""
    path = qc_json.with_name(ATTENTION_THUMBNAIL)
    return path if path.is_file() else None
