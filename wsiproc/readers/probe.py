"""Which reader decodes a slide, and why: decided once per open by a probe costing milliseconds.

libvips (pyvips-binary) reads plain TIFF pyramids fast but lacks JPEG 2000 and vendor layouts;
OpenSlide reads all it opens. The first tile of each level is decoded with pyvips to decide.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, SlideOpenError, decoder_problem
from .base import Reader
from .openslide_reader import OpenSlideReader
from .pyvips_reader import PyvipsReader, map_pages

READERS = ("auto", "pyvips", "openslide")
"""``reader`` values a caller may ask for; ``auto`` lets the probe choose."""

PYVIPS_VENDORS = frozenset({"generic-tiff", "aperio"})
"""OpenSlide vendors whose levels are plain TIFF pages, one page per level."""

CORRUPT_CAUSE = "corrupt or truncated tile"
"""A probe failure with this cause is the file's fault: OpenSlide would fail the same way."""


def choose_reader(path: str, osr: Any, *, requested: str = "auto") -> tuple[Reader, str]:
    """The reader for the slide at ``path`` (open in ``osr``) and the reason, one line.

    Parameters
    ----------
    path
        The slide file.
    osr
        Its open ``openslide.OpenSlide`` handle; the OpenSlide reader shares it.
    requested
        One of :data:`READERS`.

    Raises
    ------
    ConfigError
        ``requested`` is not one of :data:`READERS`.
    SlideOpenError
        ``requested`` is ``pyvips`` and the probe found that libvips cannot read the slide.
    """
    if requested not in READERS:
        raise ConfigError("reader", f"must be one of {', '.join(READERS)}, got {requested!r}")
    if requested == "openslide":
        return OpenSlideReader(osr), "OpenSlide was requested (--reader openslide)"
    reader, reason = _probe_pyvips(path, osr)
    if reader is not None:
        return reader, reason
    if requested == "pyvips":
        raise SlideOpenError(path, f"pyvips cannot read this slide: {reason}")
    return OpenSlideReader(osr), reason


def _probe_pyvips(path: str, osr: Any) -> tuple[PyvipsReader | None, str]:
    """A pyvips reader if libvips reads every level, else None; and why."""
    import pyvips

    props = osr.properties
    vendor = props.get("openslide.vendor")
    if vendor not in PYVIPS_VENDORS:
        return None, f"vendor {vendor!r} is not a plain TIFF pyramid, the only layout libvips reads"
    if "openslide.bounds-x" in props:
        return None, "sparse TIFF (tiles missing around openslide.bounds-*): libvips cannot"
    level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
    try:
        pages = map_pages(path, level_dimensions)
    except pyvips.Error as exc:
        return None, f"libvips cannot open the TIFF pages: {decoder_problem(exc)}"
    if not pages:
        return None, "libvips finds no TIFF page of the size of every OpenSlide level"
    reader = PyvipsReader(pages)
    for level in range(len(level_dimensions)):
        try:
            reader.probe(level)
        except pyvips.Error as exc:
            problem = decoder_problem(exc)
            if problem.startswith(CORRUPT_CAUSE):
                # OpenSlide cannot decode a corrupt tile either: keep the faster reader and
                # let the read of that region fail (or be skipped) like any other.
                return reader, f"libvips opens every level; level {level}'s first tile: {problem}"
            reader.close()
            return None, f"libvips cannot decode level {level}'s first tile: {problem}"
    return reader, f"libvips decoded a tile of each of the {len(level_dimensions)} levels"
