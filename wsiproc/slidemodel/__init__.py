"""Slide-level (attention-MIL) models over ``features.h5``: loading, running, outputs."""

from __future__ import annotations

from .features import FeatureHeader, GridCells, grid_cells, read_bag, read_header
from .load import load_slide_model
from .model import SlideModel, SlideModelSpec, SlideOutput, parse_spec

__all__ = [
    "FeatureHeader",
    "GridCells",
    "SlideModel",
    "SlideModelSpec",
    "SlideOutput",
    "grid_cells",
    "load_slide_model",
    "parse_spec",
    "read_bag",
    "read_header",
]
