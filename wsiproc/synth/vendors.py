"""The vendor TIFF containers only OpenSlide reads (Philips TIFF, Ventana BIF, Leica SCN with
bounds): each lays out just the tags and XML its OpenSlide driver detects, for any RGB array.
Apart from :mod:`wsiproc.synth.tiff`, whose layouts libvips reads too."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .pyramid import TILE_PX, Page, Scan, downsample, tiled, write_tiff_pages

XMLPACKET_TAG = 700
"""TIFF tag of XMP packets, where Ventana keeps its XML."""

LEICA_XMLNS = "http://www.leica-microsystems.com/scn/2010/10/01"


def write_philips_tiff(path: str | os.PathLike[str], image: np.ndarray, scan: Scan) -> Path:
    """Write a Philips TIFF (OpenSlide vendor ``philips``): tiled JPEG levels halving each time.

    OpenSlide detects it by ``Software`` starting with ``Philips`` and an ImageDescription XML
    whose root is ``DataObject ObjectType="DPUfsImport"``; level downsamples come from each
    ``PixelDataRepresentation``'s ``DICOM_PIXEL_SPACING`` (mm), ``openslide.mpp-x`` from the
    WSI image's, the objective power from the first entry of ``levels=`` in
    ``DICOM_DERIVATION_DESCRIPTION``.

    Three levels unless ``scan`` says otherwise.
    """
    pyramid = scan.pyramid(image, 2, 3)
    mpp, magnification, quality = scan.mpp, scan.magnification, scan.quality

    def spacing(level: int) -> str:
        mm = f"&quot;{mpp * 2**level / 1000:.9g}&quot;"
        return f'<Attribute Name="DICOM_PIXEL_SPACING">{mm} {mm}</Attribute>'

    representations = "".join(
        f'<DataObject ObjectType="PixelDataRepresentation">{spacing(i)}'
        f'<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_NUMBER">{i}</Attribute></DataObject>'
        for i in range(len(pyramid))
    )
    description = (
        '<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="DICOM_MANUFACTURER">PHILIPS</Attribute>'
        '<Attribute Name="PIM_DP_SCANNED_IMAGES"><Array><DataObject ObjectType="DPScannedImage">'
        f'<Attribute Name="DICOM_DERIVATION_DESCRIPTION">tiff-levels={magnification:g}-q{quality}'
        f"</Attribute>{spacing(0)}"
        '<Attribute Name="PIM_DP_IMAGE_TYPE">WSI</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE">'
        f"<Array>{representations}</Array></Attribute>"
        "</DataObject></Array></Attribute></DataObject>"
    )
    pages: list[Page] = [
        (pyramid[0], {**tiled(quality), "description": description, "software": "Philips"})
    ]
    pages += [(level, {**tiled(quality), "subfiletype": 1}) for level in pyramid[1:]]
    path = Path(path)
    write_tiff_pages(path, pages)
    return path


def _bif_tile_number(col: int, row: int, cols: int, rows: int) -> int:
    """Ventana's 1-based tile number: rows counted from the bottom, every other row reversed.

    Examples
    --------
    >>> [_bif_tile_number(c, r, 3, 2) for r in range(2) for c in range(3)]
    [6, 5, 4, 1, 2, 3]
    """
    from_bottom = rows - 1 - row
    along = col if from_bottom % 2 == 0 else cols - 1 - col
    return from_bottom * cols + along + 1


def _bif_encode_info(cols: int, rows: int) -> str:
    """Level 0's EncodeInfo XML: one area at the origin, every tile joint without overlap."""
    joints = []
    for row in range(rows):
        for col in range(cols):
            here = _bif_tile_number(col, row, cols, rows)
            pairs = []
            if col + 1 < cols:
                pairs.append(("RIGHT", _bif_tile_number(col + 1, row, cols, rows)))
            if row > 0:
                pairs.append(("UP", _bif_tile_number(col, row - 1, cols, rows)))
            joints += [
                f'<TileJointInfo FlagJoined="1" Confidence="100" Direction="{d}" Tile1="{here}" '
                f'Tile2="{other}" OverlapX="0" OverlapY="0"/>'
                for d, other in pairs
            ]
    return (
        '<?xml version="1.0" encoding="utf-8"?><EncodeInfo Ver="2">'
        '<AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin><SlideStitchInfo>'
        f'<ImageInfo AOIScanned="1" AOIIndex="0" Width="{TILE_PX}" Height="{TILE_PX}" '
        f'NumRows="{rows}" NumCols="{cols}" Pos-X="0" Pos-Y="0">{"".join(joints)}</ImageInfo>'
        "</SlideStitchInfo></EncodeInfo>"
    )


def write_ventana_bif(path: str | os.PathLike[str], image: np.ndarray, scan: Scan) -> Path:
    """Write a Ventana BIF (OpenSlide vendor ``ventana``), padded with white to whole tiles.

    Layout as a DP 200 writes it: page 0 the label (its XMP carries ``<iScan Magnification
    ScanRes>``, which OpenSlide detects and reads mpp and objective power from), page 1 a
    thumbnail, then the levels, each described ``level=N mag=M quality=Q``, halving each time;
    level 0's XMP ``EncodeInfo`` lays its tiles out as one scanned area (joints of zero
    overlap, so OpenSlide's stitching puts every tile at its grid position). OpenSlide sizes
    BIF levels in whole tiles, hence the padding: level 0 is ``ceil(size / 256) * 256``.
    Three levels unless ``scan`` says otherwise.
    """
    height, width = image.shape[:2]
    cols, rows = -(-width // TILE_PX), -(-height // TILE_PX)
    padded = np.full((rows * TILE_PX, cols * TILE_PX, 3), 255, dtype=np.uint8)
    padded[:height, :width] = image
    pyramid = scan.pyramid(padded, 2, 3)
    magnification, quality = scan.magnification, scan.quality

    def xmp(text: str) -> dict[str, object]:
        data = text.encode("utf-8")
        return {"extratags": [(XMLPACKET_TAG, 1, len(data), data, True)]}

    iscan = (
        '<?xml version="1.0" encoding="utf-8"?><Metadata><iScan ScannerModel="VENTANA DP 200" '
        f'Magnification="{magnification:g}" ScanRes="{scan.mpp:g}"/></Metadata>'
    )
    label = np.full((96, 96, 3), 235, dtype=np.uint8)
    pages: list[Page] = [
        (label, {"description": "Label Image", **xmp(iscan)}),
        (downsample(padded, 8), {"description": "Thumbnail"}),
    ]
    for i, level in enumerate(pyramid):
        kwargs = {**tiled(quality), "description": f"level={i} mag={magnification / 2**i:g}"}
        if i == 0:
            kwargs.update(xmp(_bif_encode_info(cols, rows)))
        pages.append((level, kwargs))
    path = Path(path)
    write_tiff_pages(path, pages)
    return path


def write_leica_scn(
    path: str | os.PathLike[str],
    image: np.ndarray,
    scan: Scan,
    *,
    canvas: tuple[int, int],
    offset: tuple[int, int],
) -> Path:
    """Write a Leica SCN (vendor ``leica``): ``image`` placed at ``offset`` on a larger canvas.

    OpenSlide detects the ``scn`` XML namespace in page 0's ImageDescription, makes the
    collection (``canvas``, in level-0 pixels) the slide and sets ``openslide.bounds-*`` to the
    main image's view: ``offset`` and ``image``'s size. Everything else is transparent. Levels
    shrink by 4 (two unless ``scan`` says otherwise); resolution tags give the mpp.

    Parameters
    ----------
    canvas, offset
        ``(width, height)`` of the whole slide and ``(x, y)`` of the image on it, level-0 px.
    """
    mpp, quality = scan.mpp, scan.quality
    nm = mpp * 1000
    pyramid = scan.pyramid(image, 4, 2)
    macro = np.full((max(1, canvas[1] // 16), max(1, canvas[0] // 16), 3), 225, np.uint8)

    def view(size: tuple[int, int], at: tuple[int, int]) -> str:
        return (
            f'<view sizeX="{round(size[0] * nm)}" sizeY="{round(size[1] * nm)}" '
            f'offsetX="{round(at[0] * nm)}" offsetY="{round(at[1] * nm)}" spacingZ="0"/>'
        )

    def settings(objective: float) -> str:
        return (
            f"<scanSettings><objectiveSettings><objective>{objective:g}</objective>"
            "</objectiveSettings><illuminationSettings><illuminationSource>brightfield"
            "</illuminationSource></illuminationSettings></scanSettings>"
        )

    dimensions = "".join(
        f'<dimension sizeX="{lv.shape[1]}" sizeY="{lv.shape[0]}" ifd="{i}"/>'
        for i, lv in enumerate(pyramid)
    )
    description = (
        f'<?xml version="1.0" encoding="utf-8"?><scn xmlns="{LEICA_XMLNS}">'
        f'<collection name="synthetic" sizeX="{round(canvas[0] * nm)}" '
        f'sizeY="{round(canvas[1] * nm)}">'
        f'<image name="main"><pixels sizeX="{image.shape[1]}" sizeY="{image.shape[0]}">'
        f"{dimensions}</pixels>{view((image.shape[1], image.shape[0]), offset)}"
        f"{settings(scan.magnification)}</image>"
        f'<image name="macro"><pixels sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}">'
        f'<dimension sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}" ifd="{len(pyramid)}"/>'
        f"</pixels>{view(canvas, (0, 0))}{settings(1.25)}</image>"
        "</collection></scn>"
    )
    pages: list[Page] = []
    for i, level in enumerate(pyramid):
        px_per_cm = 1e4 / (mpp * 4**i)
        kwargs: dict[str, object] = {
            **tiled(quality),
            "resolution": (px_per_cm, px_per_cm),
            "resolutionunit": "CENTIMETER",
        }
        if i == 0:
            kwargs["description"] = description
        pages.append((level, kwargs))
    pages.append((macro, {"compression": "jpeg"}))
    path = Path(path)
    write_tiff_pages(path, pages)
    return path
