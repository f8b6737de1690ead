"""Tissue detection on a low-resolution thumbnail, and each window's tissue fraction.

Pure functions on arrays: stained tissue is saturated, glass is not, so Otsu's threshold on
saturation (with a floor, so an empty slide's noise never counts as tissue) finds it cheaply.
"""

from __future__ import annotations

import numpy as np

THUMBNAIL_PX = 1024
"""Longer side of the thumbnail tissue is detected on (by `wsiproc level` and `infer` alike)."""

MIN_SATURATION = 20
"""Saturation (0-255) below which a pixel is never tissue, whatever Otsu says."""

MIN_OBJECT_FRACTION = 0.0005
"""Connected tissue pieces smaller than this fraction of the thumbnail are dropped as dust."""

MAX_INK_FRACTION = 0.1
"""Default of ``window.max_ink`` (``--max-ink``): where tissue gating applies, a window more
than a tenth covered by ink is skipped even if the rest of it is tissue: ink is so dark and
saturated that a tenth of a window already moves a model's output (on the demo's pen slide,
windows a fifth inked read hematoxylin 0.4, tissue 0.05–0.25)."""

MASK_TISSUE = 255
MASK_INK = 128
MASK_GLASS = 0
"""Values of the mask PNG ``wsiproc level`` writes: one file carries tissue and ink, the
exact mask that gates inference and that QC shows."""


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0-255 (uint8) of an (h, w, 3) uint8 image."""
    rgb = rgb.astype(np.int16)
    from .ink import channel_max, channel_min

    mx = channel_max(rgb)
    mn = channel_min(rgb)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx > 0, (mx - mn) * 255 // np.maximum(mx, 1), 0)
    return s.astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values (the first value of the upper class).

    Examples
    --------
    >>> otsu_threshold(np.array([10, 11, 12, 200, 201, 202], dtype=np.uint8)) in range(13, 201)
    True
    """
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = m0 / w0
        mean1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mean0 - mean1) ** 2
    between = np.nan_to_num(between)
    return int(np.argmax(between)) + 1


def tissue_mask(rgb: np.ndarray, ink: np.ndarray | None = None) -> np.ndarray:
    """Boolean tissue mask of a thumbnail: Otsu on saturation, without ink, dust and holes.

    ``ink`` (default :func:`wsiproc.ink.ink_mask` of ``rgb``) is left out of the Otsu
    statistics (a saturated stroke would raise the threshold above pale tissue) and of the
    mask, also where it lies over tissue: windows under a marker stroke are not tissue.

    Examples
    --------
    >>> img = np.full((40, 40, 3), 240, np.uint8); img[10:30, 10:30] = (200, 80, 150)
    >>> m = tissue_mask(img); int(m.sum()), bool(m[20, 20]), bool(m[0, 0])
    (400, True, False)
    >>> int(tissue_mask(np.full((40, 40, 3), 240, np.uint8)).sum())
    0
    >>> img[18:22, :] = (40, 70, 180)  # a blue stroke across the tissue
    >>> m = tissue_mask(img); bool(m[20, 20]), bool(m[12, 20])
    (False, True)
    """
    from .ink import channel_max, dilate3x3, erode3x3, ink_mask

    if ink is None:
        ink = ink_mask(rgb)
    s = saturation(rgb)
    clean = s[~ink]
    threshold = max(otsu_threshold(clean if clean.size else s), MIN_SATURATION)
    mask = s >= threshold
    # Very dark pixels (thick tissue, folds) are tissue even if grey; darker still is ink.
    mask |= channel_max(rgb) < 60
    mask = erode3x3(dilate3x3(mask))  # closing, as ndimage.binary_closing(mask, ones((3, 3)))
    mask = fill_holes(mask)
    mask &= ~ink
    if mask.any():
        labels = label_regions(mask)
        sizes = np.bincount(labels[mask], minlength=int(labels.max()) + 1)
        mask &= (sizes >= max(4, MIN_OBJECT_FRACTION * mask.size))[labels]
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every False region that does not reach the border set True (regions
    4-connected), as ``scipy.ndimage.binary_fill_holes``; libvips' flood fill instead of
    scipy, whose import alone costs a small slide's run a quarter second.

    Examples
    --------
    >>> m = np.ones((4, 4), bool); m[1, 1] = m[0, 3] = False
    >>> fill_holes(m).astype(int).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    """
    import pyvips

    h, w = mask.shape
    framed = np.zeros((h + 2, w + 2), dtype=np.uint8)  # a False frame: the outside, connected
    framed[1:-1, 1:-1] = mask
    outside = pyvips.Image.new_from_array(framed).draw_flood(2, 0, 0, equal=True)
    filled = np.ndarray(framed.shape, np.uint8, outside.write_to_memory()) != 2
    return filled[1:-1, 1:-1]


def label_regions(mask: np.ndarray) -> np.ndarray:
    """int32 labels of the 4-connected regions of equal value (True and False regions alike):
    pixels of ``mask`` share a label exactly when ``scipy.ndimage.label`` connects them.

    Examples
    --------
    >>> labels = label_regions(np.array([[1, 0, 1], [1, 0, 0]], bool))
    >>> bool(labels[0, 0] == labels[1, 0]), bool(labels[0, 0] == labels[0, 2])
    (True, False)
    """
    import pyvips

    image = pyvips.Image.new_from_array(mask.astype(np.uint8)).labelregions()
    return np.ndarray(mask.shape, np.int32, image.write_to_memory())


def window_tissue_fractions(
    mask: np.ndarray, thumb_scale_x: float, thumb_scale_y: float, boxes: np.ndarray
) -> np.ndarray:
    """Fraction of tissue pixels of the mask under each level-0 box.

    ``thumb_scale_*`` are level-0 pixels per mask pixel; ``boxes`` is (n, 4) ``x, y, w, h`` in
    level-0 pixels. Each box covers at least one mask pixel (its nearest), so windows smaller
    than a mask pixel still get a fraction. Parts outside the slide count as glass.

    Examples
    --------
    >>> m = np.zeros((4, 4), bool); m[:2, :2] = True
    >>> window_tissue_fractions(m, 10, 10, np.array([[0, 0, 20, 20], [0, 0, 40, 40]])).tolist()
    [1.0, 0.25]
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    # Summed along each row, then down the rows one row at a time: numpy's cumsum along axis
    # 0 walks each column with a whole row's stride, 10x slower on a thumbnail (17 -> 1.6 ms).
    inner = integral[1:, 1:]
    np.cumsum(mask, axis=1, out=inner)
    for i in range(1, h):
        np.add(inner[i - 1], inner[i], out=inner[i])
    boxes = np.asarray(boxes, dtype=np.float64)
    x0 = boxes[:, 0] / thumb_scale_x
    y0 = boxes[:, 1] / thumb_scale_y
    x1 = (boxes[:, 0] + boxes[:, 2]) / thumb_scale_x
    y1 = (boxes[:, 1] + boxes[:, 3]) / thumb_scale_y
    ix0 = np.floor(x0 + 0.5).astype(np.int64)
    iy0 = np.floor(y0 + 0.5).astype(np.int64)
    ix1 = np.maximum(np.floor(x1 + 0.5).astype(np.int64), ix0 + 1)
    iy1 = np.maximum(np.floor(y1 + 0.5).astype(np.int64), iy0 + 1)
    area = (ix1 - ix0) * (iy1 - iy0)
    cx0, cx1 = np.clip(ix0, 0, w), np.clip(ix1, 0, w)
    cy0, cy1 = np.clip(iy0, 0, h), np.clip(iy1, 0, h)
    inside = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    return (inside / area).astype(np.float32)


def encode_mask(tissue: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The uint8 label image of :data:`MASK_TISSUE`, :data:`MASK_INK` and glass."""
    out = np.full(tissue.shape, MASK_GLASS, dtype=np.uint8)
    out[ink] = MASK_INK
    out[tissue] = MASK_TISSUE
    return out


def decode_mask(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tissue, ink)`` booleans of a mask image.

    Besides wsiproc's own labels, a user's binary mask works: 0/1 masks (nothing above 1)
    count every non-zero pixel as tissue; 0/255 masks count >= 192 as tissue. Values in
    64–191 are ink.

    Examples
    --------
    >>> t, i = decode_mask(np.array([[0, 128, 255]], np.uint8)); t.tolist(), i.tolist()
    ([[False, False, True]], [[False, True, False]])
    >>> decode_mask(np.array([[0, 1]], np.uint8))[0].tolist()
    [[False, True]]
    """
    grey = np.asarray(grey)
    if grey.max(initial=0) <= 1:
        return grey > 0, np.zeros(grey.shape, dtype=bool)
    return grey >= 192, (grey >= 64) & (grey < 192)
