"""Slide: the sole owner of a slide file's handles; metadata, bounds and region reads as RGB.

Metadata always comes from OpenSlide; pixels come from the reader that the probe of
:mod:`wsiproc.readers` chose when the slide was opened (pyvips for plain TIFF pages it decodes,
OpenSlide for everything else). ``Slide`` does what every reader needs alike: clipping to the
level, white outside it, and one-line errors naming the file and the region.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlideOpenError, SlideReadError, decoder_problem
from .readers import L0Box, Reader, choose_reader
from .readers.base import WHITE

MPP_PLAUSIBLE = (0.02, 50.0)
"""µm/px outside this range is a placeholder (pyvips writes 25.4 px/inch = 1000 µm/px by
default), not a scanner's calibration: it is treated as missing."""


@dataclass(frozen=True)
class SlideInfo:
    """Metadata of a slide; sizes in level-0 pixels, mpp in µm per level-0 pixel.

    ``bounds`` is OpenSlide's ``openslide.bounds-*`` rectangle (the scanned area of a larger,
    mostly empty canvas: MIRAX, Leica, sparse TIFF), None when the slide has none.
    ``reader_reason`` says why the probe chose ``reader``.
    """

    path: str
    vendor: str | None
    width: int
    height: int
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    reader: str
    reader_reason: str = ""
    bounds: L0Box | None = None

    @property
    def l0_bounds(self) -> L0Box:
        """The area windows and tissue detection cover: ``bounds``, or the whole slide."""
        return self.bounds or L0Box(0, 0, self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists, ``bounds`` an object or None)."""
        d = asdict(self)
        d["level_dimensions"] = [list(x) for x in self.level_dimensions]
        d["level_downsamples"] = list(self.level_downsamples)
        return d


def _float_prop(props: Any, key: str) -> float | None:
    """A positive float property, or None if absent or unparsable."""
    try:
        value = float(props[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 and np.isfinite(value) else None


def _plausible_mpp(mpp: float | None) -> float | None:
    """``mpp`` if it is a plausible microscope pixel size, else None."""
    if mpp is None or not MPP_PLAUSIBLE[0] <= mpp <= MPP_PLAUSIBLE[1]:
        return None
    return mpp


def _bounds(props: Any, width: int, height: int) -> L0Box | None:
    """OpenSlide's bounds rectangle clipped to the slide, or None if absent or the whole slide.

    Examples
    --------
    >>> _bounds({"openslide.bounds-x": "300", "openslide.bounds-y": "250",
    ...          "openslide.bounds-width": "1000", "openslide.bounds-height": "700"}, 1600, 1200)
    L0Box(x=300, y=250, width=1000, height=700)
    >>> _bounds({}, 1600, 1200) is None
    True
    """
    try:
        x, y, w, h = (int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        return None
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0 or (x0, y0, x1, y1) == (0, 0, width, height):
        return None
    return L0Box(x0, y0, x1 - x0, y1 - y0)


class Slide:
    """An open whole-slide image.

    Owns one OpenSlide handle (metadata, and pixels when the OpenSlide reader was chosen) and
    the chosen reader. Must be closed (or used as a context manager). Not thread-safe, and not
    to be shared across processes: each loader process opens its own ``Slide``.

    OpenSlide errors latch: after a failed read the handle is dead and every later call fails.
    :meth:`read_region_rgb` therefore reopens the slide after a read error, and raises
    :class:`~wsiproc.errors.SlideReadError` naming the file and region.

    Parameters
    ----------
    path
        Any file OpenSlide opens.
    reader
        ``"auto"`` (the probe chooses), ``"openslide"`` or ``"pyvips"`` (fails to open when
        the probe finds that libvips cannot read the slide).
    """

    def __init__(self, path: str | os.PathLike[str], *, reader: str = "auto") -> None:
        self.path = str(path)
        self._requested_reader = reader
        self._osr: Any = None
        self._reader: Reader | None = None
        self._open()

    def _open(self) -> None:
        """Open OpenSlide, read the metadata, let the probe choose the reader."""
        import openslide

        p = Path(self.path)
        if not p.exists():
            raise SlideOpenError(self.path, "no such file")
        if p.is_dir():
            raise SlideOpenError(self.path, "is a directory, not a slide file")
        if p.stat().st_size == 0:
            raise SlideOpenError(self.path, "file is empty (0 bytes)")
        if not os.access(p, os.R_OK):
            raise SlideOpenError(self.path, "permission denied (this user cannot read the file)")
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(self.path, "not a slide format OpenSlide can read") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideOpenError(self.path, f"cannot open slide: {decoder_problem(exc)}") from exc
        try:
            self._reader, reason = choose_reader(
                self.path, self._osr, requested=self._requested_reader
            )
        except BaseException:
            self.close()
            raise
        props = self._osr.properties
        width, height = (int(v) for v in self._osr.dimensions)
        self.info = SlideInfo(
            path=self.path,
            vendor=props.get("openslide.vendor"),
            width=width,
            height=height,
            level_count=int(self._osr.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in self._osr.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
            mpp_x=_plausible_mpp(_float_prop(props, "openslide.mpp-x")),
            mpp_y=_plausible_mpp(_float_prop(props, "openslide.mpp-y")),
            objective_power=_float_prop(props, "openslide.objective-power"),
            reader=self._reader.name,
            reader_reason=reason,
            bounds=_bounds(props, width, height),
        )

    @property
    def reader(self) -> str:
        """Name of the reader decoding this slide (``pyvips`` or ``openslide``)."""
        return self.info.reader

    def close(self) -> None:
        """Release the file handles; the object is unusable afterwards."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({self.path!r}, reader={self.reader!r})"

    def read_region_rgb(self, level: int, lv_x: int, lv_y: int, lv_w: int, lv_h: int) -> np.ndarray:
        """Read a box of pyramid level ``level`` as an (lv_h, lv_w, 3) uint8 RGB array.

        Coordinates are in level pixels and may extend past the level's edges: the outside is
        white, as is transparent slide area (OpenSlide's alpha is composited onto white).

        Raises
        ------
        SlideReadError
            The region could not be decoded (corrupt tile, truncated file).
        """
        out = np.full((lv_h, lv_w, 3), WHITE, dtype=np.uint8)
        lw, lh = self.info.level_dimensions[level]
        x0, y0 = max(lv_x, 0), max(lv_y, 0)
        x1, y1 = min(lv_x + lv_w, lw), min(lv_y + lv_h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        if self._reader is None:
            raise ValueError(f"{self.path}: read from a closed Slide")
        try:
            inner = self._reader.read_rgb(level, x0, y0, x1 - x0, y1 - y0)
        except Exception as exc:  # noqa: BLE001 - translated: every reader error is a read error
            problem = decoder_problem(exc)
            region = (level, x0, y0, x1 - x0, y1 - y0)
            try:
                self.close()
                self._open()
            except Exception:  # noqa: BLE001 - reopen failure must not hide the read error
                pass
            raise SlideReadError(self.path, region, problem) from exc
        out[y0 - lv_y : y1 - lv_y, x0 - lv_x : x1 - lv_x] = inner
        return out

    def tile_size(self, level: int) -> int | None:
        """Width of the slide's storage tiles at ``level`` in pixels, if square and known."""
        props = self._osr.properties
        w = props.get(f"openslide.level[{level}].tile-width")
        h = props.get(f"openslide.level[{level}].tile-height")
        if w is None or w != h:
            return None
        try:
            return int(w)
        except ValueError:
            return None

    def thumbnail_rgb(self, max_size: int) -> np.ndarray:
        """A thumbnail of :attr:`SlideInfo.l0_bounds` (the whole slide when it has no bounds),
        longer side at most ``max_size`` pixels, as RGB uint8.

        Thumbnail pixel (u, v) covers level 0 from ``l0_bounds.x + u * s`` with
        ``s = l0_bounds.width / thumbnail width`` (likewise for y): the frame QuPath shows.
        """
        if self._reader is None:
            raise ValueError(f"{self.path}: thumbnail of a closed Slide")
        try:
            return self._reader.thumbnail_rgb(self.info.l0_bounds, max_size)
        except Exception as exc:  # noqa: BLE001 - translated to a one-line read error
            problem = f"cannot make the thumbnail: {decoder_problem(exc)}"
            raise SlideReadError(self.path, None, problem) from exc
