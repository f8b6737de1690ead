"""Slide: the sole owner of a slide file's handles; metadata and region reads as RGB arrays.

Reads go through pyvips where libvips decodes the format natively (generic pyramidal TIFF and
Aperio SVS: about 2.5x faster than OpenSlide's premultiplied-RGBA path, pixel-identical), and
through OpenSlide for every other format. Metadata always comes from OpenSlide.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlideOpenError, SlideReadError, decoder_problem

PYVIPS_VENDORS = frozenset({"generic-tiff", "aperio"})
"""OpenSlide vendors whose levels libvips' tiffload reads as plain TIFF pages."""

WHITE = 255

MPP_PLAUSIBLE = (0.02, 50.0)
"""µm/px outside this range is a placeholder (pyvips writes 25.4 px/inch = 1000 µm/px by
default), not a scanner's calibration: it is treated as missing."""


@dataclass(frozen=True)
class SlideInfo:
    """Metadata of a slide; sizes in level-0 pixels, mpp in µm per level-0 pixel."""

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
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


class Slide:
    """An open whole-slide image.

    Owns one OpenSlide handle and, for TIFF-family files, one pyvips image per pyramid level.
    Must be closed (or used as a context manager). Not thread-safe, and not to be shared
    across processes: each loader process opens its own ``Slide``.

    OpenSlide errors latch: after a failed read the handle is dead and every later call fails.
    :meth:`read_region_rgb` therefore reopens the handles after a read error, and raises
    :class:`~wsiproc.errors.SlideReadError` naming the file and region.

    Parameters
    ----------
    path
        Any file OpenSlide opens.
    reader
        ``"auto"`` (pyvips where possible), ``"openslide"`` or ``"pyvips"``.
    """

    def __init__(self, path: str | os.PathLike[str], *, reader: str = "auto") -> None:
        self.path = str(path)
        self._requested_reader = reader
        self._osr: Any = None
        self._pages: dict[int, Any] = {}
        self._open()

    def _open(self) -> None:
        """Open OpenSlide and map pyramid levels to pyvips pages."""
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
        props = self._osr.properties
        vendor = props.get("openslide.vendor")
        self.reader = "openslide"
        if self._requested_reader in ("auto", "pyvips") and vendor in PYVIPS_VENDORS:
            self._pages = self._map_pyvips_pages()
            if self._pages:
                self.reader = "pyvips"
        if self._requested_reader == "pyvips" and self.reader != "pyvips":
            raise SlideOpenError(self.path, "pyvips cannot read this slide's levels")
        self.info = SlideInfo(
            path=self.path,
            vendor=vendor,
            width=int(self._osr.dimensions[0]),
            height=int(self._osr.dimensions[1]),
            level_count=int(self._osr.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in self._osr.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
            mpp_x=_plausible_mpp(_float_prop(props, "openslide.mpp-x")),
            mpp_y=_plausible_mpp(_float_prop(props, "openslide.mpp-y")),
            objective_power=_float_prop(props, "openslide.objective-power"),
            reader=self.reader,
        )

    def _map_pyvips_pages(self) -> dict[int, Any]:
        """Level index -> pyvips page, matched by exact size; empty if any level is missing."""
        import pyvips

        try:
            first = pyvips.Image.new_from_file(self.path, access="random")
            n_pages = int(first.get("n-pages")) if "n-pages" in first.get_fields() else 1
            sizes: dict[tuple[int, int], int] = {}
            for page in range(n_pages):
                img = first if page == 0 else pyvips.Image.new_from_file(self.path, page=page)
                sizes.setdefault((img.width, img.height), page)
        except pyvips.Error:
            return {}
        pages: dict[int, Any] = {}
        for level, dims in enumerate(self._osr.level_dimensions):
            page = sizes.get((int(dims[0]), int(dims[1])))
            if page is None:
                return {}
            img = pyvips.Image.new_from_file(
                self.path, page=page, access="random", fail_on="warning"
            )
            if img.format != "uchar" or img.bands not in (3, 4):
                return {}
            pages[level] = img
        return pages

    def close(self) -> None:
        """Release the file handles; the object is unusable afterwards."""
        if self._osr is not None:
            self._osr.close()
            self._osr = None
        self._pages = {}

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
        try:
            if self.reader == "pyvips":
                inner = self._read_pyvips(level, x0, y0, x1 - x0, y1 - y0)
            else:
                inner = self._read_openslide(level, x0, y0, x1 - x0, y1 - y0)
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

    def _read_pyvips(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Decode one box with libvips; composite alpha onto white."""
        img = self._pages[level]
        raw = img.crop(x, y, w, h).write_to_memory()
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, img.bands)
        if img.bands == 4:
            return _over_white(arr)
        return arr

    def _read_openslide(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Decode one box with OpenSlide (location in level-0 pixels); composite onto white."""
        ds = self.info.level_downsamples[level]
        pil = self._osr.read_region((round(x * ds), round(y * ds)), level, (w, h))
        return _over_white(np.asarray(pil))

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
        """A thumbnail whose longer side is at most ``max_size`` pixels, as RGB uint8.

        With pyvips, the coarsest level still at least ``max_size`` wide is shrunk in a
        streaming pass (bounded memory, several times faster than OpenSlide's thumbnail).
        """
        try:
            if self.reader == "pyvips":
                level = 0
                for i, (w, h) in enumerate(self.info.level_dimensions):
                    if max(w, h) >= max_size:
                        level = i
                img = self._pages[level]
                if img.bands == 4:
                    img = img.flatten(background=[WHITE, WHITE, WHITE])
                factor = max_size / max(img.width, img.height)
                if factor < 1:
                    img = img.resize(factor, kernel="linear")
                raw = img.cast("uchar").write_to_memory()
                return np.frombuffer(raw, dtype=np.uint8).reshape(img.height, img.width, 3)
            pil = self._osr.get_thumbnail((max_size, max_size))
        except Exception as exc:  # noqa: BLE001 - translated to a one-line read error
            problem = f"cannot make the thumbnail: {decoder_problem(exc)}"
            raise SlideReadError(self.path, None, problem) from exc
        return np.asarray(pil.convert("RGB"))


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA onto white; pass RGB through."""
    if rgba.shape[2] == 3:
        return rgba
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + WHITE * (255 - a) + 127) // 255).astype(np.uint8)
