"""The TIFF containers libvips reads as well as OpenSlide: Aperio SVS, generic pyramidal TIFF,
and a TIFF without resolution, each written from any RGB array.

Every writer takes ``path`` (the output file) and ``image`` (``(height, width, 3)`` uint8 RGB
pixels of level 0), returns ``path`` as a :class:`pathlib.Path` and raises
:class:`~wsiproc.errors.OutputError` when the file cannot be written. The other vendor TIFFs,
which only OpenSlide reads, are in :mod:`wsiproc.synth.vendors`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from PIL import Image

from ..errors import OutputError, one_line
from .pyramid import build_pyramid, tiled, write_tiff_pages

if TYPE_CHECKING:
    import pyvips

APERIO_HEADER = "Aperio Image Library v12.0.15 "

SVS_CODECS = {"jpeg": ("jpeg", "JPEG/RGB"), "jp2k": (33005, "J2K/KDU")}
"""``write_svs`` compression -> (tifffile compression, Aperio description codec). 33005 is
Aperio's JPEG 2000 with RGB components, which OpenSlide decodes and libvips (as shipped in
pyvips-binary) does not."""


def _to_vips(image: np.ndarray) -> pyvips.Image:
    """Wrap an H×W×3 uint8 array as an sRGB pyvips image."""
    import pyvips

    return pyvips.Image.new_from_array(np.ascontiguousarray(image)).copy(interpretation="srgb")


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    mpp: float | None = None,
    tile: int = 256,
    quality: int = 90,
    compression: str = "jpeg",
) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF with pyvips (OpenSlide vendor ``generic-tiff``).

    pyvips halves each level until it fits one tile. With ``mpp`` the resolution tags say
    ``10000 / mpp`` pixels per centimetre, which OpenSlide reports as ``openslide.mpp-x``.
    Without it pyvips still writes its default of 25.4 pixels per inch, which OpenSlide reads
    as 1000 µm/px; use :func:`write_plain_tiff_no_metadata` for a slide without resolution.

    Parameters
    ----------
    mpp : float, optional
        Level-0 pixel size in µm per pixel.
    tile : int
        Tile width and height in pixels (a multiple of 16).
    quality : int
        JPEG quality (1-100).
    compression : str
        pyvips TIFF compression (``jpeg``, ``deflate``, ``lzw``, ``none``, ...).
    """
    import pyvips

    path = Path(path)
    kwargs: dict[str, object] = {}
    if mpp is not None:
        kwargs.update(xres=1000.0 / mpp, yres=1000.0 / mpp, resunit="cm")
    try:
        _to_vips(image).tiffsave(
            str(path),
            tile=True,
            pyramid=True,
            compression=compression,
            Q=quality,
            tile_width=tile,
            tile_height=tile,
            **kwargs,
        )
    except pyvips.Error as exc:
        problem = one_line(exc)
        raise OutputError(str(path), problem) from exc
    return path


def write_plain_tiff_no_metadata(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a tiled JPEG pyramid (factor 2 per level) that carries no resolution at all.

    Written with tifffile (``ResolutionUnit`` = none), because pyvips always writes a
    resolution; OpenSlide then reports no ``openslide.mpp-x``.
    """
    path = Path(path)
    pyramid = build_pyramid(image, 2, None, min_side=4, fits=256)
    # OpenSlide's generic-tiff driver takes only reduced-resolution pages as levels.
    reduced = {**tiled(90), "subfiletype": tifffile.FILETYPE.REDUCEDIMAGE}
    write_tiff_pages(path, [(image, tiled(90))] + [(level, reduced) for level in pyramid[1:]])
    return path


def _aperio_description(
    width: int,
    height: int,
    *,
    mpp: float,
    magnification: float,
    tile: int,
    quality: int,
    codec: str = "JPEG/RGB",
) -> str:
    """Aperio ImageDescription of level 0, as OpenSlide's aperio driver parses it."""
    return (
        f"{APERIO_HEADER}\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"{codec} Q={quality}|AppMag = {magnification:g}|MPP = {mpp:g}"
    )


def write_svs(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    mpp: float,
    magnification: float,
    tile: int = 256,
    quality: int = 90,
    levels: int = 3,
    compression: str = "jpeg",
) -> Path:
    """Write an Aperio-style SVS with tifffile (OpenSlide vendor ``aperio``).

    Layout as Aperio writes it: page 0 is level 0 (tiled, description carrying ``AppMag`` and
    ``MPP``), page 1 a stripped JPEG thumbnail (an associated image), then each further level
    downsampled by 4 from the previous one (size floor(size / 4)).

    Parameters
    ----------
    mpp : float
        Level-0 pixel size in µm per pixel (``openslide.mpp-x``).
    magnification : float
        Scanner objective power (``openslide.objective-power``).
    tile : int
        Tile width and height in pixels (a multiple of 16).
    quality : int
        JPEG quality (1-100).
    levels : int
        Pyramid levels including level 0; fewer if a level would shrink below one pixel.
    compression : str
        Tile codec: ``jpeg``, or ``jp2k`` (Aperio JPEG 2000, TIFF compression 33005, as
        Aperio scanners write it; ``quality`` is then imagecodecs' JPEG 2000 level).

    Raises
    ------
    ValueError
        ``compression`` is not one of :data:`SVS_CODECS`.
    """
    if compression not in SVS_CODECS:
        message = f"compression must be one of {sorted(SVS_CODECS)}, got {compression!r}"
        raise ValueError(message)
    codec, codec_name = SVS_CODECS[compression]
    path = Path(path)
    height, width = image.shape[:2]
    description = _aperio_description(
        width,
        height,
        mpp=mpp,
        magnification=magnification,
        tile=tile,
        quality=quality,
        codec=codec_name,
    )
    tiles = tiled(quality, tile=tile, compression=codec)
    suffix = description.split("|", 1)[1]
    thumb_scale = min(1.0, 768 / max(width, height))
    thumb_size = (max(1, round(width * thumb_scale)), max(1, round(height * thumb_scale)))
    thumbnail = np.asarray(Image.fromarray(image).resize(thumb_size, Image.Resampling.BOX))
    thumb_description = (
        f"{APERIO_HEADER}\n{width}x{height} -> {thumb_size[0]}x{thumb_size[1]} - |{suffix}"
    )
    pages = [
        (image, {**tiles, "description": description}),
        (thumbnail, {"compression": "jpeg", "description": thumb_description}),
    ]
    for level in build_pyramid(image, 4, levels, min_side=4)[1:]:
        level_description = (
            f"{APERIO_HEADER}\n{width}x{height} [0,0 {width}x{height}] -> "
            f"{level.shape[1]}x{level.shape[0]} {codec_name} Q={quality}|{suffix}"
        )
        pages.append((level, {**tiles, "description": level_description}))
    write_tiff_pages(path, pages)
    return path
