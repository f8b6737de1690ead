"""Which windows the model sees: every window's tissue and ink fraction, and how it was known.

The gating contract (docs/contracts.md) in one place, so the engine only calls it:

* ``min_tissue == 0``: every window of the grid, no gating of any kind. The ``tissue`` column
  still comes from a given mask file, else from the thumbnail; a thumbnail that cannot be
  decoded is no error then (whatever ``on_read_error``): the column is NaN and the reason
  recorded.
* ``min_tissue > 0``: tissue from the mask file, else from the slide's thumbnail; a window
  runs when its tissue fraction is >= ``min_tissue`` and its ink fraction <= ``max_ink``.
* An undecodable thumbnail or mask (or the level stage's *unknown* mask): under
  ``on_read_error == "skip"`` every window runs with tissue NaN and the reason is recorded;
  under ``"fail"`` the read error stops the run (an unknown mask names its reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputTableError, SlideReadError
from ..grid import Grid
from ..slide import Slide
from .plan import window_fractions


@dataclass(frozen=True)
class WindowTissue:
    """Each window's tissue and ink fraction, ``(rows, cols)`` float32.

    ``tissue`` is NaN where it is unknown; ``ink`` is None when no ink rule applies.
    ``source`` is ``mask``, ``thumbnail`` or ``none`` (unknown); ``unknown_reason`` says why
    the tissue is unknown (None when it is known).
    """

    tissue: np.ndarray
    ink: np.ndarray | None
    source: str
    unknown_reason: str | None = None

    @property
    def unknown(self) -> bool:
        """Whether the tissue column is NaN for lack of a mask or thumbnail."""
        return self.source == "none"


def _unknown(grid: Grid, reason: str) -> WindowTissue:
    """Every window of unknown tissue: NaN, no ink rule, all of them run."""
    tissue = np.full((grid.rows, grid.cols), np.nan, dtype=np.float32)
    return WindowTissue(tissue, None, "none", reason)


def measure_window_tissue(
    slide: Slide,
    grid: Grid,
    *,
    min_tissue: float,
    mask: str | None,
    skip_read_errors: bool,
) -> WindowTissue:
    """Tissue (and, where gating applies, ink) fraction of every window of ``grid``.

    Parameters
    ----------
    slide : Slide
        Open slide; its thumbnail is read when no ``mask`` is given.
    grid : Grid
        The run's window grid; masks cover the slide's bounds, as the thumbnail does.
    min_tissue : float
        0 turns every kind of gating off.
    mask : str, optional
        A mask PNG (the level stage's, or a user's).
    skip_read_errors : bool
        ``--on-read-error skip``: an unreadable thumbnail or mask gives tissue NaN.

    Raises
    ------
    SlideReadError
        The thumbnail cannot be decoded, under ``fail`` with ``min_tissue > 0``.
    InputTableError
        The mask cannot be read, or holds no tissue information, under ``fail``.
    """
    if not (grid.rows and grid.cols):
        empty = np.zeros((grid.rows, grid.cols), dtype=np.float32)
        return WindowTissue(empty, None, "mask" if mask else "thumbnail")
    gate = min_tissue > 0
    bounds = slide.info.l0_bounds
    if mask:
        from ..maskfile import mask_unknown_reason, read_mask

        reason = mask_unknown_reason(mask)
        if reason is not None:
            if gate and not skip_read_errors:
                raise InputTableError(mask, f"holds no tissue information ({reason})")
            return _unknown(grid, reason)
        try:
            tissue_px, ink_px = read_mask(mask)
        except InputTableError as exc:
            if not skip_read_errors:
                raise
            return _unknown(grid, str(exc))
        tissue = window_fractions(grid, tissue_px, bounds)
        ink = window_fractions(grid, ink_px, bounds) if gate else None
        return WindowTissue(tissue, ink, "mask")
    from ..ink import ink_mask
    from ..tissue import THUMBNAIL_PX, tissue_mask

    try:
        thumb = slide.thumbnail_rgb(THUMBNAIL_PX)
    except SlideReadError as exc:
        # Without gating the thumbnail only fills the tissue column: never a reason to fail.
        if gate and not skip_read_errors:
            raise
        return _unknown(grid, exc.problem)
    ink_px = ink_mask(thumb)
    tissue_px = tissue_mask(thumb, ink_px)
    return WindowTissue(
        window_fractions(grid, tissue_px, bounds),
        window_fractions(grid, ink_px, bounds),
        "thumbnail",
    )
