"""Pixel readers behind :class:`wsiproc.slide.Slide`: the protocol, two implementations, the probe."""

from .base import L0Box, Reader
from .probe import PYVIPS_VENDORS, READERS, choose_reader

__all__ = ["L0Box", "PYVIPS_VENDORS", "READERS", "Reader", "choose_reader"]
