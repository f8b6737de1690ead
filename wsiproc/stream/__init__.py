"""The streaming engine: loader processes -> collector (model) -> writer process.

Re-exports the extension point and the entry point.
"""

from .collector import ModelCollector, StreamCollector, StreamInfo, StreamPiece
from .engine import InferRequest, InferResult, run_inference

__all__ = [
    "InferRequest",
    "InferResult",
    "ModelCollector",
    "StreamPiece",
    "StreamCollector",
    "StreamInfo",
    "run_inference",
]
