"""The whole exception hierarchy of wsiproc.

Every error a user can cause is a :class:`WsiprocError` whose message is one line naming the
file (or config key) and the problem; the CLI prints it as ``error: ...`` and exits non-zero.
"""

from __future__ import annotations

DECODER_CAUSES = (
    (
        ("jpeg2000", "jp2k", "openjpeg", "jpeg 2000"),
        "unsupported compression (JPEG 2000) for this reader",
    ),
    (("unsupported compression", "compression scheme"), "unsupported compression"),
    (("permission denied",), "permission denied"),
    (("no space left",), "no space left on device"),
    (
        (
            "not a jpeg", "bogus marker", "decompress error", "corrupt jpeg", "premature end",
            "huffman", "jpeg datastream", "invalid jpeg", "read error", "truncated",
            "bad tile", "decode", "out of data", "tiffreaddirectory",
        ),
        "corrupt or truncated tile",
    ),
)  # fmt: skip
"""Decoder phrases (lower case) -> the cause a user can act on, first match wins."""

NOISE_LINES = frozenset({"unable to write to memory", "unable to call thumbnail_image"})
"""libvips' generic first lines, which say nothing about the cause."""


def decoder_problem(exc: BaseException) -> str:
    """A libvips/OpenSlide error folded into one line: the cause, then the decoder's words.

    Examples
    --------
    >>> decoder_problem(RuntimeError("unable to write to memory"))
    'RuntimeError'
    >>> decoder_problem(RuntimeError("VipsJpeg: Bogus marker length"))
    'corrupt or truncated tile (VipsJpeg: Bogus marker length)'
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln.lower().rstrip(":") not in NOISE_LINES]
    detail = "; ".join(dict.fromkeys(lines[:3])) or type(exc).__name__
    low = detail.lower()
    for needles, cause in DECODER_CAUSES:
        if any(n in low for n in needles):
            return f"{cause} ({detail})"
    return detail


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
    """Reading one region of an opened slide failed (corrupt tile, truncated file).

    ``region`` is ``(level, x, y, width, height)`` in that level's pixels, or None when the
    read was not of one region (the thumbnail).
    """

    def __init__(
        self, path: str, region: tuple[int, int, int, int, int] | None, problem: str
    ) -> None:
        self.path = str(path)
        self.region = region
        self.problem = problem
        where = ""
        if region is not None:
            level, x, y, w, h = region
            where = f" (level {level}, region {x},{y} {w}×{h})"
        super().__init__(f"{self.path}: {problem}{where}")


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
