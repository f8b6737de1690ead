"""Writer of a DICOM WSI series (OpenSlide vendor ``dicom``) for any RGB array, with pydicom.

Apart from :mod:`wsiproc.synth.vendors` because it needs pydicom (a test dependency only) and
writes a directory of files rather than one TIFF.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import describe_os_error
from ..errors import OutputError
from .pyramid import TILE_PX, Scan

DICOM_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""VL Whole Slide Microscopy Image Storage: the only SOP class OpenSlide's DICOM driver opens."""


def _jpeg_frames(level: np.ndarray, quality: int) -> list[bytes]:
    """Row-major JPEG tiles of ``level``, edge tiles padded with white to the full tile."""
    frames = []
    for y in range(0, level.shape[0], TILE_PX):
        for x in range(0, level.shape[1], TILE_PX):
            tile = np.full((TILE_PX, TILE_PX, 3), 255, dtype=np.uint8)
            part = level[y : y + TILE_PX, x : x + TILE_PX]
            tile[: part.shape[0], : part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
            frames.append(buffer.getvalue())
    return frames


def write_dicom_wsi(directory: str | os.PathLike[str], image: np.ndarray, scan: Scan) -> Path:
    """Write a DICOM WSI series, one file per level (``level0.dcm``, ...), into ``directory``.

    Each file is a VL Whole Slide Microscopy image (the SOP class OpenSlide's DICOM driver
    opens), ``ImageType`` ``VOLUME``, one series, a ``TILED_FULL`` multi-frame pyramid of
    256-px JPEG baseline frames (YCbCr, ``YBR_FULL_422``) halving per level;
    ``PixelSpacing`` (mm) and ``ObjectiveLensPower`` give ``openslide.mpp-x`` and the
    objective power. OpenSlide opens any one file and finds the others in its directory.

    Three levels unless ``scan`` says otherwise. Needs ``pydicom`` (a test extra); raises
    :class:`~wsiproc.errors.OutputError` when a file cannot be written.

    Returns
    -------
    pathlib.Path
        The level-0 file, the one to give as the slide.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    directory = Path(directory)
    series, study = generate_uid(), generate_uid()
    paths = []
    for i, level in enumerate(scan.pyramid(image, 2, 3)):
        frames = _jpeg_frames(level, scan.quality)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DICOM_WSI_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = DICOM_WSI_SOP_CLASS, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "SM"
        ds.ImageType = ["ORIGINAL" if i == 0 else "DERIVED", "PRIMARY", "VOLUME", "NONE"]
        ds.Rows = ds.Columns = TILE_PX
        ds.NumberOfFrames = len(frames)
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = level.shape[1], level.shape[0]
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        measures = Dataset()
        measures.PixelSpacing = [scan.mpp * 2**i / 1000] * 2
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        optical = Dataset()
        optical.OpticalPathIdentifier, optical.ObjectiveLensPower = "1", scan.magnification
        ds.OpticalPathSequence = [optical]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        paths.append(directory / f"level{i}.dcm")
        try:
            ds.save_as(paths[-1], enforce_file_format=True)
        except OSError as exc:
            raise OutputError(str(paths[-1]), describe_os_error(exc)) from exc
    return paths[0]
