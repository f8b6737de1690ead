"""Synthetic H&E-like slides in the formats wsiproc reads, for the demo and the test fixtures.

Kept apart from the pipeline so that real runs never depend on it, and so that every test slide
(good or deliberately broken) comes from one generator instead of committed binaries.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
import yaml
from PIL import Image
from scipy import ndimage

from .atomic import atomic_write, describe_os_error
from .errors import OutputError

if TYPE_CHECKING:
    import pyvips

#: Ruifrok & Johnston optical-density vectors (R, G, B) of the two stains and of a green marker.
HEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286], dtype=np.float32)
EOSIN_OD = np.array([0.072, 0.990, 0.105], dtype=np.float32)
PEN_OD = np.array([1.45, 0.40, 1.05], dtype=np.float32)
#: Optical density of bare glass: about (240, 240, 240).
GLASS_OD = np.float32(-math.log(240.0 / 255.0))
#: Long side of the low-resolution grid on which the tissue shapes are drawn.
SHAPE_GRID_PX = 256
APERIO_HEADER = "Aperio Image Library v12.0.15 "


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise scaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _upsample(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, separable resize of a 2-D float32 field to (height, width), centres aligned."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    c0, c1, cw = axis(width, field.shape[1])
    cols = field[:, c0] * (1 - cw) + field[:, c1] * cw  # still low-resolution rows
    r0, r1, rw = axis(height, field.shape[0])
    out = cols[r0]
    out *= (1 - rw)[:, None]
    upper = cols[r1]
    upper *= rw[:, None]
    out += upper
    return out


def _tissue_field(rng: np.random.Generator, low_shape: tuple[int, int]) -> np.ndarray:
    """Low-resolution field whose upper ~30-45 % (thresholded) forms irregular tissue pieces."""
    long_side = max(low_shape)
    field = _smooth_noise(rng, low_shape, long_side / 14) + 0.45 * _smooth_noise(
        rng, low_shape, long_side / 45
    )
    # Keep pieces off the slide edge, as a pathologist would place them.
    ramp_r = np.minimum(np.arange(low_shape[0]), np.arange(low_shape[0])[::-1]) / long_side
    ramp_c = np.minimum(np.arange(low_shape[1]), np.arange(low_shape[1])[::-1]) / long_side
    edge = np.minimum.outer(ramp_r, ramp_c).astype(np.float32)
    field -= 3.0 * np.clip(1.0 - edge / 0.08, 0.0, 1.0)
    # Lumens and tears: a few small holes inside the tissue.
    holes = _smooth_noise(rng, low_shape, 2.0)
    field -= 4.0 * np.clip(holes - 2.3, 0.0, None)
    coverage = rng.uniform(0.33, 0.42)
    field -= np.float32(np.quantile(field, 1.0 - coverage))
    return field


def _nuclei(
    rng: np.random.Generator,
    mask: np.ndarray,
    density_low: np.ndarray,
    *,
    radius_px: float,
) -> np.ndarray:
    """Hematoxylin concentration of round-ish nuclei scattered over ``mask`` (H×W float32)."""
    height, width = mask.shape
    out = np.zeros((height, width), dtype=np.float32)
    max_density = 1.0 / (3.0 * radius_px) ** 2
    n_candidates = int(max_density * height * width)
    ys = rng.integers(0, height, n_candidates)
    xs = rng.integers(0, width, n_candidates)
    ly = ys * density_low.shape[0] // height
    lx = xs * density_low.shape[1] // width
    keep = mask[ys, xs] & (rng.random(n_candidates) < density_low[ly, lx])
    ys, xs = ys[keep], xs[keep]
    radii = radius_px * rng.uniform(0.65, 1.35, ys.size)
    darkness = rng.uniform(0.7, 1.5, ys.size).astype(np.float32)
    # Stamp nuclei in a few radius classes so each class uses one vectorised offset table.
    edges = np.quantile(radii, [0.0, 0.33, 0.66, 1.0]) if ys.size else np.zeros(4)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (radii >= lo) & (radii <= hi)
        if not sel.any():
            continue
        r = float(radii[sel].mean())
        span = int(math.ceil(r + 1))
        dy, dx = np.mgrid[-span : span + 1, -span : span + 1]
        aspect = rng.uniform(0.7, 1.0)
        profile = np.clip(r + 0.5 - np.hypot(dy, dx * aspect), 0.0, 1.0).ravel()
        inside = profile > 0
        dy, dx, profile = dy.ravel()[inside], dx.ravel()[inside], profile[inside]
        yy = np.clip(ys[sel, None] + dy[None, :], 0, height - 1)
        xx = np.clip(xs[sel, None] + dx[None, :], 0, width - 1)
        out[yy, xx] = np.maximum(out[yy, xx], darkness[sel, None] * profile[None, :])
    return out


def _pen_stroke(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boolean H×W mask of one thick, wavy marker stroke across most of the slide."""
    thickness = 0.09 * height
    x0, x1 = int(0.08 * width), int(0.92 * width)
    cols = np.arange(width, dtype=np.float32)
    centre = height * (
        rng.uniform(0.3, 0.7)
        + 0.12 * np.sin(2 * np.pi * cols / width * rng.uniform(0.8, 1.6) + rng.uniform(0, 6))
    )
    rows = np.arange(height, dtype=np.float32)[:, None]
    stroke = np.abs(rows - centre[None, :]) < thickness / 2
    stroke[:, :x0] = False
    stroke[:, x1:] = False
    return stroke


def tissue_image(
    width: int,
    height: int,
    *,
    seed: int,
    tissue: bool = True,
    pen_mark: bool = False,
    nucleus_radius_px: float = 4.0,
) -> np.ndarray:
    """Render an H&E-like slide image: glass, pink tissue pieces, purple nuclei, optional pen.

    Colours are composed in optical density (Beer-Lambert) from the hematoxylin and eosin stain
    vectors, so stain-based models and colour QC see realistic values. Shapes are drawn on a
    low-resolution grid and upsampled, so a 6000×4000 image takes about 1.5 s on one core.

    Parameters
    ----------
    width, height : int
        Image size in pixels.
    seed : int
        Seed of the random generator; the same arguments always give the same image.
    tissue : bool
        Draw tissue (about 33-42 % of the area). False gives bare glass only.
    pen_mark : bool
        Add one thick green marker stroke, about 7 % of the image area.
    nucleus_radius_px : float
        Mean nucleus radius in pixels (4 px ≈ 4 µm at 20x, 0.5 mpp).

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` uint8 RGB image.

    Examples
    --------
    >>> image = tissue_image(300, 200, seed=0)
    >>> image.shape, image.dtype.name
    ((200, 300, 3), 'uint8')
    >>> bool((tissue_image(300, 200, seed=0, tissue=False) > 225).all())
    True
    """
    if width < 1 or height < 1:
        message = f"image size must be positive, got {width}x{height}"
        raise ValueError(message)
    rng = np.random.default_rng(seed)
    scale = max(width, height) / SHAPE_GRID_PX
    low_shape = (max(2, math.ceil(height / scale)), max(2, math.ceil(width / scale)))
    od_e = np.zeros((height, width), dtype=np.float32)
    od_h = None
    if tissue:
        mask = _upsample(_tissue_field(rng, low_shape), height, width) > 0
        # Eosin: smooth regional variation times fine fibrous texture, built at 1/3 resolution.
        mid_shape = (max(2, height // 3), max(2, width // 3))
        regional = 0.45 + 0.12 * _smooth_noise(rng, low_shape, max(low_shape) / 20)
        eosin = _upsample(regional, *mid_shape)
        eosin *= 1.0 + 0.18 * _smooth_noise(rng, mid_shape, 0.8)
        od_e = _upsample(eosin, height, width)
        od_e *= mask
        density = np.clip(0.5 + 0.4 * _smooth_noise(rng, low_shape, max(low_shape) / 25), 0, 1)
        od_h = _nuclei(rng, mask, density, radius_px=nucleus_radius_px)
        od_h += np.float32(0.06) * mask  # faint background hematoxylin in the stroma
    pen = _pen_stroke(rng, height, width) if pen_mark else None
    grain = rng.integers(-3, 4, size=(height, width), dtype=np.int8)
    out = np.empty((height, width, 3), dtype=np.uint8)
    od = np.empty((height, width), dtype=np.float32)
    term = np.empty_like(od) if od_h is not None or pen is not None else None
    for channel in range(3):
        np.multiply(od_e, EOSIN_OD[channel], out=od)
        od += GLASS_OD
        if od_h is not None:
            od += np.multiply(od_h, HEMATOXYLIN_OD[channel], out=term)
        if pen is not None:
            od += np.multiply(pen, PEN_OD[channel], out=term)
        np.exp(np.negative(od, out=od), out=od)
        od *= 255.0
        od += grain
        np.clip(od, 0, 255, out=od)
        out[..., channel] = od
    return out


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
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else "pyvips error"
        raise OutputError(str(path), problem) from exc
    return path


def _tifffile_write(path: Path, pages: list[tuple[np.ndarray, dict[str, object]]]) -> None:
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
    _tifffile_write(path, pages)
    return path


def _aperio_description(
    width: int, height: int, *, mpp: float, magnification: float, tile: int, quality: int
) -> str:
    """Aperio ImageDescription of level 0, as OpenSlide's aperio driver parses it."""
    return (
        f"{APERIO_HEADER}\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {magnification:g}|MPP = {mpp:g}"
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
) -> Path:
    """Write an Aperio-style SVS with tifffile (OpenSlide vendor ``aperio``).

    Layout as Aperio writes it: page 0 is level 0 (tiled JPEG, description carrying
    ``AppMag`` and ``MPP``), page 1 a stripped thumbnail (an associated image), then each
    further level downsampled by 4 from the previous one (size floor(size / 4)).

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
    height, width = image.shape[:2]
    description = _aperio_description(
        width, height, mpp=mpp, magnification=magnification, tile=tile, quality=quality
    )
    tiled = {"tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": quality}}
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
            f"{level.shape[1]}x{level.shape[0]} JPEG/RGB Q={quality}|{suffix}"
        )
        pages.append((level, {**tiled, "description": level_description}))
    _tifffile_write(path, pages)
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


@dataclass(frozen=True)
class DemoSlide:
    """One slide of the demo cohort: who it belongs to, its format and what it shows."""

    patient: str
    slide: str
    filename: str
    writer: str  # "svs", "tiff" (resolution tags) or "tiff-nompp" (no resolution)
    width: int
    height: int
    mpp: float
    magnification: float = 0.0  # objective power; only the svs writer records it
    tissue: bool = True
    pen_mark: bool = False
    sheet_mpp: float | None = None  # written to the sheet's mpp column when the file has none


#: The demo cohort: 4 patients, 6 slides; the 20x and 40x SVS cover 1.5 × 1.0 mm each.
DEMO_SLIDES = (
    DemoSlide("P1", "P1_A", "P1_A.svs", "svs", 3000, 2000, 0.5, 20),
    DemoSlide("P1", "P1_B", "P1_B.tif", "tiff", 2600, 1800, 0.5),
    DemoSlide("P2", "P2_A", "P2_A.svs", "svs", 6000, 4000, 0.25, 40),
    DemoSlide("P3", "P3_A", "P3_A.tif", "tiff", 2000, 1500, 0.5, tissue=False),
    DemoSlide("P4", "P4_A", "P4_A.svs", "svs", 3000, 2000, 0.5, 20, pen_mark=True),
    DemoSlide("P4", "P4_B", "P4_B.tif", "tiff-nompp", 2400, 1600, 0.5, sheet_mpp=0.5),
)


def demo_config(directory: Path) -> dict[str, object]:
    """The demo's workflow config, with absolute paths under ``directory``."""
    return {
        "samples": str(directory / "samples.tsv"),
        "outdir": str(directory / "results"),
        "logdir": str(directory / "logs"),
        "level": {"mpp": 1.0},
        "window": {"kernel_size": 64, "stride": 32, "border": "valid", "min_tissue": 0.25},
        "model": {"path": "builtin:stain", "batch_size": 64, "device": "auto", "precision": "fp32"},
        "loader": {"workers": 1},
        "heatmap": {"mode": "window", "output": None, "colormap": "viridis"},
        "qc": {"blur_threshold": 20.0, "pen_threshold": 0.002, "min_tissue_percent": 0.5},
    }


def demo_cohort(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the demo cohort: slides, sample sheet and workflow config under ``directory``.

    Four patients, six slides: Aperio SVS at 20x (0.5 mpp) and 40x (0.25 mpp) covering the
    same physical size, generic pyramidal TIFFs with resolution tags, one glass-only slide,
    one with a pen mark, and one TIFF without resolution whose mpp comes from the sheet.

    Parameters
    ----------
    directory : path-like
        Output directory; ``slides/``, ``samples.tsv`` and ``config.yaml`` are written there.
    seed : int
        Base seed; the same seed gives byte-identical slides.

    Returns
    -------
    pathlib.Path
        Absolute path of ``config.yaml``.

    Raises
    ------
    OutputError
        A file cannot be written.
    """
    directory = Path(directory).resolve()
    slides_dir = directory / "slides"
    try:
        slides_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(slides_dir), describe_os_error(exc)) from exc
    rows = ["patient\tslide\tpath\tmpp"]
    for index, spec in enumerate(DEMO_SLIDES):
        image = tissue_image(
            spec.width,
            spec.height,
            seed=seed * 1000 + index,
            tissue=spec.tissue,
            pen_mark=spec.pen_mark,
            nucleus_radius_px=2.0 / spec.mpp,  # nuclei ~4 µm across at any scan resolution
        )
        relative = f"slides/{spec.filename}"
        if spec.writer == "svs":
            write_svs(directory / relative, image, mpp=spec.mpp, magnification=spec.magnification)
        elif spec.writer == "tiff":
            write_pyramidal_tiff(directory / relative, image, mpp=spec.mpp)
        else:
            write_plain_tiff_no_metadata(directory / relative, image)
        sheet_mpp = "" if spec.sheet_mpp is None else f"{spec.sheet_mpp:g}"
        rows.append(f"{spec.patient}\t{spec.slide}\t{relative}\t{sheet_mpp}")
    with atomic_write(directory / "samples.tsv") as fh:
        fh.write("\n".join(rows) + "\n")
    config_path = directory / "config.yaml"
    with atomic_write(config_path) as fh:
        yaml.safe_dump(demo_config(directory), fh, sort_keys=False)
    return config_path
