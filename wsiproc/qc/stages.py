"""What the optional stages say about one slide, for ``qc.json``, ``qc.html`` and the report.

The features run's record (``features.json``) gives patches embedded, encoder and throughput;
the slide model's ``slide.json`` gives the prediction and the attention-on-background share.
``wsiproc qc`` copies these small summaries into ``qc.json``, so the cohort report reads one
JSON file per slide whatever stages ran (cheap at 10,000 slides).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputTableError

PREDICTION_FLAGS = ("no_patches", "attention_off_tissue")
"""The slide model's QC flags (``qc_flags`` of ``slide.json``) that ``qc.json`` carries on."""


def _load(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object, or one line naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputTableError(str(path), f"cannot read {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputTableError(str(path), f"not a {what} (no JSON object)")
    return data


def features_summary(path: str | Path) -> dict[str, Any]:
    """``features.json`` -> encoder, patches embedded, dimension, precision, device and
    throughput (patches/s over the whole run)."""
    record = _load(path, "features.json")
    shape = record.get("output_shape") or [None]
    return {
        "encoder": record.get("model"),
        "patches": record.get("windows_processed"),
        "dim": shape[0],
        "precision": record.get("precision"),
        "device": record.get("device"),
        "runtime_s": record.get("elapsed_s"),
        "patches_per_s": record.get("windows_per_s"),
        "path": str(path),
    }


def prediction_summary(path: str | Path) -> dict[str, Any]:
    """``slide.json`` -> model, classes, probabilities (or regression values), predicted class,
    patches, attention share off tissue and the slide model's flags."""
    data = _load(path, "slide.json")
    try:
        task = data["task"]
        classes = [str(c) for c in data["classes"]]
        values = data["probabilities"] if task == "classification" else data["logits"]
    except KeyError as exc:
        raise InputTableError(str(path), f"not a slide.json (no key {exc})") from exc
    share = data.get("attention_off_tissue_share")
    return {
        "model": data.get("model"),
        "task": task,
        "classes": classes,
        "values": None if values is None else [float(v) for v in values],
        "predicted_class": data.get("predicted_class"),
        "n_patches": data.get("n_patches"),
        "attention_off_tissue": None if not share else max(float(s) for s in share),
        "attention_threshold": data.get("attention_threshold"),
        "flags": [f for f in data.get("qc_flags") or () if f in PREDICTION_FLAGS],
        "path": str(path),
    }
