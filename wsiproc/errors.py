"""The whole exception hierarchy of wsiproc.

Every error a user can cause is a :class:`WsiprocError` whose message is one line naming the
file (or config key) and the problem; the CLI prints it as ``error: ...`` and exits non-zero.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """A foreign exception as one line for our messages: its first non-empty line, or its type.

    Examples
    --------
    >>> one_line(ValueError("bad tile\\ndetails"))
    'bad tile'
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


class WsiprocError(Exception):
    """Root of every error wsiproc raises on bad input or a failed environment."""

    exit_code = 1


class SlideOpenError(WsiprocError):
    """A slide is missing, unreadable or in a format no reader supports."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SlideReadError(WsiprocError):
    """Reading one region of an opened slide failed (corrupt tile, truncated file)."""

    def __init__(self, path: str, region: tuple[int, int, int, int, int], problem: str) -> None:
        self.path = str(path)
        self.region = region
        level, x, y, w, h = region
        self.problem = problem
        super().__init__(
            f"{self.path}: cannot read region level={level} x={x} y={y} w={w} h={h}: {problem}"
        )


class MetadataError(WsiprocError):
    """The slide lacks metadata the level choice needs (mpp, objective power)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class ConfigError(WsiprocError):
    """A parameter value is invalid; ``key`` names the option or config key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}")


class ModelError(WsiprocError):
    """A model cannot be loaded or returned outputs of the wrong shape."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = str(source)
        super().__init__(f"{self.source}: {problem}")


class OutputError(WsiprocError):
    """An output could not be written (full disk, permissions, bad directory)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class InputTableError(WsiprocError):
    """A CSV or JSON produced by an earlier step is missing, malformed or from another run."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class WorkerError(WsiprocError):
    """A stream process died or failed without a more specific error."""
