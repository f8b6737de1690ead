"""Synthetic slides for the demo, the tests and the benchmarks: pixels with a known ground truth,
written in every container format wsiproc reads, so no slide binary is ever committed.

One module per idea: :mod:`.tissue` paints the pixels, :mod:`.pyramid` builds and writes the
levels every format shares, :mod:`.tiff` (Aperio SVS, generic and plain TIFF), :mod:`.vendors`
(Philips, Ventana, Leica) and :mod:`.dicom` lay out the containers, :mod:`.corrupt` damages a
tile for the failure tests. Real runs never import this package.
"""

from .corrupt import corrupt_tile
from .dicom import write_dicom_wsi
from .pyramid import Scan, build_pyramid, downsample
from .tiff import write_plain_tiff_no_metadata, write_pyramidal_tiff, write_svs
from .tissue import INK_OD, render_slide, tissue_image
from .vendors import write_leica_scn, write_philips_tiff, write_ventana_bif

__all__ = [
    "INK_OD",
    "Scan",
    "build_pyramid",
    "corrupt_tile",
    "downsample",
    "render_slide",
    "tissue_image",
    "write_dicom_wsi",
    "write_leica_scn",
    "write_philips_tiff",
    "write_plain_tiff_no_metadata",
    "write_pyramidal_tiff",
    "write_svs",
    "write_ventana_bif",
]
