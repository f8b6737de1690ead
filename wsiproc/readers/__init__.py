"""Pixel readers behind :class:`wsiproc.slide.Slide`: protocol, two implementations, probe."""

from .base import L0Box, Reader
from .probe import PYVIPS_VENDORS, READERS, choose_reader

__all__ = ["L0Box", "PYVIPS_VENDORS", "READERS", "Reader", "choose_reader"]
