"""A loaded encoder or slide model kept for the next slide of the same process.

Outside a batch (:func:`keeping_models` not entered) :func:`load_once` just calls the loader:
``wsiproc features`` and ``wsiproc slide-predict`` behave as they always did. Inside, the
first slide loads the model and later slides with the same key get the same object, so a
batch of K slides pays one load (a ViT-B TorchScript: about 8 s) instead of K. A model that
fails to load is not any one slide's fault: :class:`ModelLoadError` fails the whole batch.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from ..errors import WsiprocError

LOADED_LINE = "batch: loaded"
"""Start of the line each load prints to stderr inside a batch (tests count them)."""

_kept: dict[Hashable, Any] | None = None


class ModelLoadError(WsiprocError):
    """A model that failed to load inside a batch: the batch job fails, not one slide."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.exit_code = getattr(cause, "exit_code", 1)


@contextlib.contextmanager
def keeping_models() -> Iterator[None]:
    """Keep every model loaded through :func:`load_once` until the block ends."""
    global _kept
    _kept = {}
    try:
        yield
    finally:
        _kept = None


def load_once(key: Hashable, loader: Callable[[], Any], what: str | None = None) -> Any:
    """``loader()``, or inside :func:`keeping_models` the object an earlier call with the same
    ``key`` loaded. ``what`` names a model in the load line (None: no line, for the cheap
    things kept only so that their errors fail the batch, such as a sidecar)."""
    if _kept is None:
        return loader()
    if key in _kept:
        return _kept[key]
    started = time.monotonic()
    try:
        model = loader()
    except Exception as exc:  # noqa: BLE001 - re-raised as the batch's error
        raise ModelLoadError(exc) from exc
    _kept[key] = model
    if what is not None:
        seconds = time.monotonic() - started
        print(f"{LOADED_LINE} {what} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return model
