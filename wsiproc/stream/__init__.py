"""The streaming engine: loader processes -> collector (model) -> writer process.

Imports run one way: ``engine`` (the orchestrator) imports ``plan``, ``pipeline``,
``checkpoint`` and ``assemble``; the engine and the pipeline take the call as data from
``request``; no module of the stream imports the engine. Re-exports the extension point and
the entry point, lazily: loader and writer processes import only their own modules, so they
start fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "StreamCollector": "collector",
    "StreamInfo": "collector",
    "StreamPiece": "collector",
    "ModelCollector": "collector",
    "InferRequest": "request",
    "InferResult": "engine",
    "run_inference": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
