"""wsiproc: whole-slide images to per-window model outputs, heatmaps and QC reports."""

__version__ = "0.1.0"
