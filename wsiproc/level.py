"""Pure level choice: slide metadata + a level request -> the level to read and the resize to apply.

Kept apart from I/O so that 20x and 40x slides provably end at the same processing resolution:
windows come out at the requested mpp even when no pyramid level matches it exactly.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, MetadataError
from .slide import SlideInfo

SNAP_TOLERANCE = 0.02
"""A level within 2% of the requested scale is read as is (scanner downsamples are rarely exact)."""


@dataclass(frozen=True)
class LevelSpec:
    """What the user asked for: exactly one of ``level``, ``mpp``, ``magnification``, ``function``.

    ``slide_mpp`` overrides the slide's level-0 mpp (sample-sheet correction);
    ``fallback_mpp`` is used only when the slide has none. ``allow_upsampling`` accepts a
    target finer than level 0 (windows enlarged from the scan: detail the scanner never saw).
    """

    level: int | None = None
    mpp: float | None = None
    magnification: float | None = None
    function: str | None = None
    slide_mpp: float | None = None
    fallback_mpp: float | None = None
    allow_upsampling: bool = False

    def __post_init__(self) -> None:
        chosen = [
            k for k in ("level", "mpp", "magnification", "function") if getattr(self, k) is not None
        ]
        if len(chosen) > 1:
            raise ConfigError(
                "level", f"give only one of level/mpp/magnification/function, got {chosen}"
            )
        for key in ("mpp", "magnification", "slide_mpp", "fallback_mpp"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(key.replace("_", "-"), f"must be a positive number, got {value}")
        if self.level is not None and self.level < 0:
            raise ConfigError("level", f"must be >= 0, got {self.level}")

    def request(self) -> dict[str, Any]:
        """The request as a small dict for records and fingerprints."""
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}


@dataclass(frozen=True)
class LevelPlan:
    """Where windows are cut.

    ``scale`` is the size of one processing pixel in level-0 pixels; ``resize_factor`` is
    processing pixels per pixel of ``level`` (1.0: read as is; < 1: downscale after reading).
    ``proc_width``/``proc_height`` are the size, at the processing resolution, of the area
    windows cover: the whole slide, or the processing pixels wholly inside the slide's bounds,
    whose top-left pixel is ``(proc_x0, proc_y0)`` (processing pixel p covers level-0
    ``[p * scale, (p + 1) * scale)``).
    """

    level: int
    level_downsample: float
    scale: float
    resize_factor: float
    proc_width: int
    proc_height: int
    proc_mpp: float | None
    mpp_source: str
    upsampled: bool = False
    proc_x0: int = 0
    proc_y0: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LevelPlan:
        """Inverse of :meth:`to_dict`, ignoring extra keys (and defaulting newer ones)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def level0_mpp(info: SlideInfo, spec: LevelSpec) -> tuple[float | None, str]:
    """The level-0 mpp to use and where it came from: override, metadata, fallback or none."""
    if spec.slide_mpp is not None:
        return spec.slide_mpp, "override"
    if info.mpp_x is not None:
        return info.mpp_x, "metadata"
    if spec.fallback_mpp is not None:
        return spec.fallback_mpp, "fallback"
    return None, "none"


def select_level(info: SlideInfo, spec: LevelSpec) -> LevelPlan:
    """Choose the pyramid level and resize for ``spec``.

    For a target mpp or magnification, the level read is the coarsest one at least as fine as
    the target (so resizing only ever shrinks), snapped when within ``SNAP_TOLERANCE``.

    Raises
    ------
    MetadataError
        The target needs an mpp or magnification the slide does not record and none was given.
    ConfigError
        The fixed level does not exist, or a user function fails or returns a bad level.

    Examples
    --------
    >>> info = SlideInfo("s.svs", "aperio", 4000, 3000, 2, ((4000, 3000), (1000, 750)),
    ...                  (1.0, 4.0), 0.25, 0.25, 40.0, "pyvips")
    >>> p = select_level(info, LevelSpec(mpp=0.5))
    >>> (p.level, p.scale, p.resize_factor, p.proc_width)
    (0, 2.0, 0.5, 2000)
    >>> select_level(info, LevelSpec(mpp=1.0)).level
    1
    """
    mpp0, source = level0_mpp(info, spec)
    if spec.function is not None:
        level = call_level_function(spec.function, info)
        return _fixed(info, level, mpp0, source)
    if spec.mpp is None and spec.magnification is None:
        return _fixed(info, spec.level or 0, mpp0, source)
    if spec.mpp is not None:
        if mpp0 is None:
            raise MetadataError(
                info.path,
                "slide has no mpp metadata; give the sheet's mpp column or level.fallback_mpp",
            )
        scale = spec.mpp / mpp0
    else:
        assert spec.magnification is not None
        # A sheet mpp corrects the scanner's calibration, so its objective power is suspect
        # too: the magnification is then read from the corrected mpp.
        objective = None if source == "override" else info.objective_power
        if objective is None and mpp0 is not None:
            objective = 10.0 / mpp0  # the usual convention: 40x ~ 0.25 µm/px
        if objective is None:
            raise MetadataError(
                info.path,
                "slide has no objective power or mpp metadata; give the sheet's mpp column "
                "or level.fallback_mpp",
            )
        scale = objective / spec.magnification
    upsampled = scale < 1 - SNAP_TOLERANCE
    if upsampled and not spec.allow_upsampling:
        target = f"{spec.mpp:g} µm/px" if spec.mpp is not None else f"{spec.magnification:g}x"
        level0 = f"{mpp0:g} µm/px" if mpp0 is not None else f"{objective:g}x"
        raise MetadataError(
            info.path,
            f"target {target} is finer than level 0 ({level0}): windows would be upsampled "
            f"{1 / scale:.3g}x; choose a coarser target, or allow it with --allow-upsampling "
            "(workflow: level.allow_upsampling: true)",
        )
    # Coarsest level not coarser than the target (with snapping tolerance).
    level = 0
    for i, ds in enumerate(info.level_downsamples):
        if ds <= scale * (1 + SNAP_TOLERANCE):
            level = i
    ds = info.level_downsamples[level]
    if abs(ds / scale - 1) <= SNAP_TOLERANCE:
        return _fixed(info, level, mpp0, source)
    size = (int(math.floor(info.width / scale)), int(math.floor(info.height / scale)))
    proc_x0, proc_y0, proc_w, proc_h = proc_frame(info, scale, size)
    return LevelPlan(
        level=level,
        level_downsample=ds,
        scale=scale,
        resize_factor=ds / scale,
        proc_width=proc_w,
        proc_height=proc_h,
        proc_mpp=None if mpp0 is None else mpp0 * scale,
        mpp_source=source,
        upsampled=upsampled,
        proc_x0=proc_x0,
        proc_y0=proc_y0,
    )


def _fixed(info: SlideInfo, level: int, mpp0: float | None, source: str) -> LevelPlan:
    """Plan reading ``level`` as is."""
    if not 0 <= level < info.level_count:
        raise ConfigError(
            "level", f"{info.path} has levels 0..{info.level_count - 1}, level {level} requested"
        )
    ds = info.level_downsamples[level]
    proc_x0, proc_y0, w, h = proc_frame(info, ds, info.level_dimensions[level])
    return LevelPlan(
        level=level,
        level_downsample=ds,
        scale=ds,
        resize_factor=1.0,
        proc_width=w,
        proc_height=h,
        proc_mpp=None if mpp0 is None else mpp0 * ds,
        mpp_source=source,
        proc_x0=proc_x0,
        proc_y0=proc_y0,
    )


def proc_frame(info: SlideInfo, scale: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Origin and size ``(proc_x0, proc_y0, width, height)`` of the area windows cover.

    ``size`` is the whole slide in processing pixels. Without bounds that is the area; with
    ``info.bounds`` it is the processing pixels wholly inside them, so neither the grid nor
    tissue detection sees the empty canvas around a MIRAX or Leica scan.

    Examples
    --------
    >>> from wsiproc.readers import L0Box
    >>> info = SlideInfo("s.scn", "leica", 1600, 1200, 1, ((1600, 1200),), (1.0,), 0.5, 0.5,
    ...                  20.0, "openslide", bounds=L0Box(301, 250, 1000, 700))
    >>> proc_frame(info, 2.0, (800, 600))
    (151, 125, 499, 350)
    """
    if info.bounds is None:
        return 0, 0, size[0], size[1]
    b = info.bounds
    x0, y0 = math.ceil(b.x / scale), math.ceil(b.y / scale)
    x1 = min(size[0], math.floor((b.x + b.width) / scale))
    y1 = min(size[1], math.floor((b.y + b.height) / scale))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def load_callable(ref: str, key: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr``."""
    if ":" not in ref:
        raise ConfigError(key, f"expected 'module:function' or 'file.py:function', got {ref!r}")
    mod_name, _, attr = ref.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            spec = importlib.util.spec_from_file_location(f"_wsiproc_user_{path.stem}", path)
            if spec is None or spec.loader is None or not path.exists():
                raise ConfigError(key, f"{path}: no such Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        return getattr(module, attr)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code: any failure becomes a config error
        raise ConfigError(key, f"cannot load {ref!r}: {type(exc).__name__}: {exc}") from exc


def call_level_function(ref: str, info: SlideInfo) -> int:
    """Call a user level function with the slide's metadata dict; it must return a level index."""
    func = load_callable(ref, "level.function")
    try:
        level = func(info.to_dict())
    except Exception as exc:  # noqa: BLE001 - user code
        raise ConfigError("level.function", f"{ref} failed on {info.path}: {exc}") from exc
    if isinstance(level, bool) or not isinstance(level, int):
        raise ConfigError("level.function", f"{ref} returned {level!r}, expected a level index")
    return level
