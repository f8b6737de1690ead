"""Writers of images as slide files in the formats wsiproc reads, and a tile corrupter for tests.

Kept apart from :mod:`wsiproc.synth` (which makes the pixels): each writer lays out one vendor
format (Aperio SVS, generic pyramidal TIFF, TIFF without resolution) for any RGB array.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from PIL import Image

from .atomic import describe_os_error
from .errors import OutputError, one_line

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
    path : path-like
        Output file.
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB pixels of level 0.
    mpp : float, optional
        Level-0 pixel size in µm per pixel.
    tile : int
        Tile width and height in pixels (a multiple of 16).
    quality : int
        JPEG quality (1-100).
    compression : str
        pyvips TIFF compression (``jpeg``, ``deflate``, ``lzw``, ``none``, ...).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        The file cannot be written.
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


def write_tiff_pages(path: Path, pages: list[tuple[np.ndarray, dict[str, object]]]) -> None:
    """Write one TIFF page per (array, tifffile keyword arguments); OS errors → OutputError."""
    try:
        with tifffile.TiffWriter(path) as writer:
            for array, kwargs in pages:
                writer.write(array, photometric="rgb", metadata=None, **kwargs)
    except OSError as exc:
        raise OutputError(str(path), describe_os_error(exc)) from exc


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter an H×W×3 uint8 image by an integer factor, as the synthetic pyramids do.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB image.
    factor : int
        Downsampling factor (>= 1).

    Returns
    -------
    numpy.ndarray
        ``(height // factor, width // factor, 3)`` uint8; trailing rows and columns that do not
        fill a whole box are dropped.

    Examples
    --------
    >>> downsample(np.zeros((9, 10, 3), np.uint8), 4).shape
    (2, 2, 3)
    """
    if factor < 1:
        message = f"downsampling factor must be >= 1, got {factor}"
        raise ValueError(message)
    height, width = image.shape[0] // factor, image.shape[1] // factor
    cropped = Image.fromarray(np.ascontiguousarray(image[: height * factor, : width * factor]))
    return np.asarray(cropped.reduce(factor))


def write_plain_tiff_no_metadata(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a tiled JPEG pyramid (factor 2 per level) that carries no resolution at all.

    Written with tifffile (``ResolutionUnit`` = none), because pyvips always writes a
    resolution; OpenSlide then reports no ``openslide.mpp-x``.

    Parameters
    ----------
    path : path-like
        Output file.
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB pixels of level 0.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    path = Path(path)
    tiled = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 90}}
    pages = [(image, tiled)]
    level = image
    while max(level.shape[:2]) > 256 and min(level.shape[:2]) >= 4:
        level = downsample(level, 2)
        # OpenSlide's generic-tiff driver takes only reduced-resolution pages as levels.
        pages.append((level, {**tiled, "subfiletype": tifffile.FILETYPE.REDUCEDIMAGE}))
    write_tiff_pages(path, pages)
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
    path : path-like
        Output file.
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB pixels of level 0.
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

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        The file cannot be written.
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
    tiled = {"tile": (tile, tile), "compression": codec, "compressionargs": {"level": quality}}
    suffix = description.split("|", 1)[1]
    thumb_scale = min(1.0, 768 / max(width, height))
    thumb_size = (max(1, round(width * thumb_scale)), max(1, round(height * thumb_scale)))
    thumbnail = np.asarray(Image.fromarray(image).resize(thumb_size, Image.Resampling.BOX))
    thumb_description = (
        f"{APERIO_HEADER}\n{width}x{height} -> {thumb_size[0]}x{thumb_size[1]} - |{suffix}"
    )
    pages = [
        (image, {**tiled, "description": description}),
        (thumbnail, {"compression": "jpeg", "description": thumb_description}),
    ]
    level = image
    for _ in range(1, levels):
        if min(level.shape[:2]) < 4:
            break
        level = downsample(level, 4)
        level_description = (
            f"{APERIO_HEADER}\n{width}x{height} [0,0 {width}x{height}] -> "
            f"{level.shape[1]}x{level.shape[0]} {codec_name} Q={quality}|{suffix}"
        )
        pages.append((level, {**tiled, "description": level_description}))
    write_tiff_pages(path, pages)
    return path


def corrupt_tile(
    path: str | os.PathLike[str], *, level: int = 0, tile_index: int | None = None
) -> tuple[int, int, int, int]:
    """Zero every byte of one JPEG tile of a tiled TIFF in place, so decoding it fails.

    The TIFF structure stays valid, so the slide still opens; only reads that touch the tile
    fail (OpenSlide raises ``OpenSlideError``; pyvips raises ``pyvips.Error`` at any
    ``fail_on`` setting, because libjpeg's "Not a JPEG file" is fatal).

    Parameters
    ----------
    path : path-like
        A tiled JPEG TIFF or SVS, modified in place.
    level : int
        Pyramid level, counting tiled pages from the largest (associated images are skipped).
    tile_index : int, optional
        Row-major tile index within the level; default the tile in the middle.

    Returns
    -------
    tuple of int
        ``(x, y, width, height)`` of the tile in level-0 pixels, clipped to the image.

    Raises
    ------
    ValueError
        ``level`` or ``tile_index`` is out of range, or the level is not JPEG-compressed.
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        tiled = [page for page in tif.pages if page.is_tiled]
        if level >= len(tiled):
            message = f"{path}: level {level} out of range (0..{len(tiled) - 1})"
            raise ValueError(message)
        base, page = tiled[0], tiled[level]
        if page.compression != tifffile.COMPRESSION.JPEG:
            message = f"{path}: level {level} is not JPEG-compressed"
            raise ValueError(message)
        cols = math.ceil(page.imagewidth / page.tilewidth)
        rows = math.ceil(page.imagelength / page.tilelength)
        if tile_index is None:
            tile_index = (rows // 2) * cols + cols // 2
        if not 0 <= tile_index < rows * cols:
            message = f"{path}: tile {tile_index} out of range (0..{rows * cols - 1})"
            raise ValueError(message)
        offset = int(page.dataoffsets[tile_index])
        count = int(page.databytecounts[tile_index])
        row, col = divmod(tile_index, cols)
        lv_x, lv_y = col * page.tilewidth, row * page.tilelength
        lv_w = min(page.tilewidth, page.imagewidth - lv_x)
        lv_h = min(page.tilelength, page.imagelength - lv_y)
        down_x = base.imagewidth / page.imagewidth
        down_y = base.imagelength / page.imagelength
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(count))
    return (
        round(lv_x * down_x),
        round(lv_y * down_y),
        min(round(lv_w * down_x), base.imagewidth - round(lv_x * down_x)),
        min(round(lv_h * down_y), base.imagelength - round(lv_y * down_y)),
    )
