"""Feature extraction for multiple-instance learning: encoders, the features file, exporters.

``wsiproc features`` runs the stream engine with an :class:`~.encoder.Encoder` (a program file,
a timm weights file via :mod:`.timm_encoder`, or the built-in one) as the model and
assembles :mod:`.h5file` (TRIDENT's layout) instead of the CSV; :mod:`.export` writes the
STAMP, slideflow and CLAM layouts from it.
"""

from __future__ import annotations

from .encoder import Encoder, encoder_spec
from .export import EXPORTS, export_features, read_features
from .sidecar import EncoderSpec, TimmSpec, parse_spec, read_spec

__all__ = [
    "EXPORTS",
    "Encoder",
    "EncoderSpec",
    "TimmSpec",
    "encoder_spec",
    "export_features",
    "parse_spec",
    "read_features",
    "read_spec",
]
