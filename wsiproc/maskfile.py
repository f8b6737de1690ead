"""The tissue/ink mask PNG: written once per slide by ``wsiproc level``, read by ``infer`` (to
gate windows) and ``qc`` (to show it), so every stage sees the same mask.

When the thumbnail could not be decoded (``--on-read-error skip``), the level stage writes an
*unknown* mask instead: every pixel tissue, so nothing is gated out, and a PNG text chunk
(:data:`UNKNOWN_KEY`) holding the reason, which ``infer`` and ``qc`` read back so the tissue
is recorded as unknown (NaN), not as 100 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path
from .errors import InputTableError
from .tissue import MASK_TISSUE, decode_mask, encode_mask

UNKNOWN_KEY = "wsiproc-tissue-unknown"
"""PNG text key of a mask whose tissue is unknown; its value says why."""


def write_mask(path: str | Path, tissue: np.ndarray, ink: np.ndarray) -> None:
    """Write the label PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(encode_mask(tissue, ink)).save(tmp, format="PNG")


def write_unknown_mask(path: str | Path, shape: tuple[int, int], reason: str) -> None:
    """Write the mask of a slide whose tissue could not be detected, atomically.

    ``shape`` is ``(height, width)``; every pixel is :data:`~wsiproc.tissue.MASK_TISSUE`
    (nothing gated out) and ``reason`` goes in the :data:`UNKNOWN_KEY` text chunk.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(UNKNOWN_KEY, reason)
    image = Image.fromarray(np.full(shape, MASK_TISSUE, dtype=np.uint8))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def mask_unknown_reason(path: str | Path) -> str | None:
    """Why the mask at ``path`` holds no tissue information, or None for a real mask.

    Reads only the PNG header chunks (no pixels); an unreadable file is None here and an
    error for :func:`read_mask`.
    """
    try:
        with Image.open(path) as image:
            reason = image.info.get(UNKNOWN_KEY)
    except (OSError, UnidentifiedImageError):
        return None
    return str(reason) if reason is not None else None


def read_mask(
    path: str | Path, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(tissue, ink)`` of a mask PNG, resized (nearest) to ``(height, width)`` if given.

    Raises
    ------
    InputTableError
        Missing or unreadable image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            grey = image.convert("L")
    except UnidentifiedImageError as exc:
        raise InputTableError(str(path), "not a readable image") from exc
    except OSError as exc:
        raise InputTableError(str(path), exc.strerror or str(exc)) from exc
    if shape is not None and grey.size != (shape[1], shape[0]):
        grey = grey.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return decode_mask(np.asarray(grey))


def ink_overlay(thumbnail: np.ndarray, tissue: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The thumbnail with ink in solid magenta and glass greyed out: what QC shows of the mask.

    Examples
    --------
    >>> img = np.full((1, 3, 3), 200, np.uint8)
    >>> ink_overlay(img, np.array([[True, False, False]]), np.array([[False, True, False]]))[0]
    array([[200, 200, 200],
           [255,   0, 255],
           [244, 244, 244]], dtype=uint8)
    """
    out = thumbnail.copy()
    glass = ~tissue & ~ink
    out[glass] = (0.2 * out[glass] + 0.8 * 255).astype(np.uint8)
    out[ink] = (255, 0, 255)
    return out
