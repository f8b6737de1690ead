"""Session-wide test slides, generated once by :mod:`wsiproc.synth` (no binaries committed).

Good slides come in the formats libvips reads (pyvips generic TIFF, Aperio SVS written by
tifffile) at odd sizes, and in those only OpenSlide reads (JPEG 2000 SVS, Philips TIFF,
Ventana BIF, Leica SCN with bounds, DICOM WSI); broken ones cover each way a file can fail to
open or read.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from wsiproc import synth

#: Level-0 pixel sizes (µm/px) and objective powers of the slide fixtures.
TIFF_MPP = 0.5
SVS_20X_MPP = 0.5
SVS_40X_MPP = 0.25
#: Leica SCN fixture: canvas (width, height) and the scanned image's corner on it, level-0 px.
LEICA_CANVAS = (1731, 1307)
LEICA_OFFSET = (345, 278)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Versions of the readers and tools the results depend on."""
    import openslide
    import pyvips

    lines = [
        f"openslide-python {openslide.__version__}, OpenSlide {openslide.__library_version__}",
        f"pyvips {pyvips.__version__}, libvips "
        f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}",
    ]
    for package in ("torch", "snakemake"):
        try:
            lines.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{package} not installed")
    return lines


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding every generated test slide of the session."""
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def tiff_image() -> np.ndarray:
    """Level-0 pixels of :func:`tiff_slide`: 1531×1107 (width×height) RGB."""
    return synth.tissue_image(1531, 1107, seed=11)


@pytest.fixture(scope="session")
def tiff_slide(slide_dir: Path, tiff_image: np.ndarray) -> Path:
    """pyvips pyramidal JPEG TIFF (generic-tiff), 1531×1107, 0.5 mpp in resolution tags."""
    return synth.write_pyramidal_tiff(slide_dir / "generic.tif", tiff_image, mpp=TIFF_MPP)


@pytest.fixture(scope="session")
def svs_image_40x() -> np.ndarray:
    """Level-0 pixels of :func:`svs_slide_40x`: 4022×3006 RGB at 0.25 µm/px."""
    return synth.tissue_image(4022, 3006, seed=12, nucleus_radius_px=8.0)


@pytest.fixture(scope="session")
def svs_image_20x(svs_image_40x: np.ndarray) -> np.ndarray:
    """Level-0 pixels of :func:`svs_slide_20x`: the 40x image box-filtered by 2, 2011×1503."""
    return synth.downsample(svs_image_40x, 2)


@pytest.fixture(scope="session")
def svs_slide_20x(slide_dir: Path, svs_image_20x: np.ndarray) -> Path:
    """Aperio SVS, 2011×1503, AppMag 20, MPP 0.5; levels downsampled by 4 and 16."""
    return synth.write_svs(
        slide_dir / "aperio_20x.svs", svs_image_20x, mpp=SVS_20X_MPP, magnification=20
    )


@pytest.fixture(scope="session")
def svs_slide_40x(slide_dir: Path, svs_image_40x: np.ndarray) -> Path:
    """Aperio SVS of the same tissue as ``svs_slide_20x`` at twice the resolution.

    4022×3006, AppMag 40, MPP 0.25; levels downsampled by 4 and 16.
    """
    return synth.write_svs(
        slide_dir / "aperio_40x.svs", svs_image_40x, mpp=SVS_40X_MPP, magnification=40
    )


@pytest.fixture(scope="session")
def nompp_image() -> np.ndarray:
    """Level-0 pixels of :func:`nompp_slide`: 1201×901 RGB."""
    return synth.tissue_image(1201, 901, seed=13)


@pytest.fixture(scope="session")
def nompp_slide(slide_dir: Path, nompp_image: np.ndarray) -> Path:
    """Tiled JPEG pyramid (generic-tiff) without resolution tags: OpenSlide reports no mpp."""
    return synth.write_plain_tiff_no_metadata(slide_dir / "nompp.tif", nompp_image)


@pytest.fixture(scope="session")
def corrupt_slide(slide_dir: Path) -> tuple[Path, tuple[int, int, int, int]]:
    """2048×2048 pyvips TIFF (0.5 mpp) whose middle level-0 tile is zeroed; (path, l0 box).

    The slide opens; reading any region that touches the box fails in OpenSlide and pyvips.
    """
    path = synth.write_pyramidal_tiff(
        slide_dir / "corrupt.tif", synth.tissue_image(2048, 2048, seed=14), mpp=TIFF_MPP
    )
    return path, synth.corrupt_tile(path)


@pytest.fixture(scope="session")
def zero_byte_slide(slide_dir: Path) -> Path:
    """An empty file named ``.svs``."""
    path = slide_dir / "empty.svs"
    path.write_bytes(b"")
    return path


@pytest.fixture(scope="session")
def truncated_slide(slide_dir: Path, tiff_image: np.ndarray) -> Path:
    """A pyvips pyramidal TIFF cut to half its bytes: neither OpenSlide nor pyvips opens it."""
    path = synth.write_pyramidal_tiff(slide_dir / "truncated.tif", tiff_image, mpp=TIFF_MPP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="session")
def not_a_slide(slide_dir: Path) -> Path:
    """A text file named ``.tif``."""
    path = slide_dir / "notes.tif"
    path.write_text("this is a text file, not a slide\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def vendor_image() -> np.ndarray:
    """Level-0 pixels of the vendor-format fixtures: 1109×777 RGB."""
    return synth.tissue_image(1109, 777, seed=15)


@pytest.fixture(scope="session")
def jp2k_svs(slide_dir: Path, vendor_image: np.ndarray) -> Path:
    """Aperio SVS with JPEG 2000 tiles (compression 33005), 20x, 0.5 mpp: OpenSlide only."""
    return synth.write_svs(
        slide_dir / "aperio_jp2k.svs", vendor_image, mpp=0.5, magnification=20, compression="jp2k"
    )


@pytest.fixture(scope="session")
def philips_tiff(slide_dir: Path, vendor_image: np.ndarray) -> Path:
    """Philips TIFF, 40x, 0.25 mpp, levels halving."""
    return synth.write_philips_tiff(
        slide_dir / "philips.tiff", vendor_image, synth.Scan(mpp=0.25, magnification=40)
    )


@pytest.fixture(scope="session")
def ventana_bif(slide_dir: Path, vendor_image: np.ndarray) -> Path:
    """Ventana BIF, 40x, 0.25 mpp; level 0 padded with white to 1280×1024 (whole tiles)."""
    return synth.write_ventana_bif(
        slide_dir / "ventana.bif", vendor_image, synth.Scan(mpp=0.25, magnification=40)
    )


@pytest.fixture(scope="session")
def leica_scn(slide_dir: Path, vendor_image: np.ndarray) -> Path:
    """Leica SCN, 20x, 0.5 mpp: the image at ``LEICA_OFFSET`` on a ``LEICA_CANVAS`` canvas,
    so OpenSlide reports bounds (345, 278, 1109, 777) and transparency around them."""
    return synth.write_leica_scn(
        slide_dir / "leica.scn",
        vendor_image,
        synth.Scan(mpp=0.5, magnification=20),
        canvas=LEICA_CANVAS,
        offset=LEICA_OFFSET,
    )


@pytest.fixture(scope="session")
def dicom_wsi(tmp_path_factory: pytest.TempPathFactory, vendor_image: np.ndarray) -> Path:
    """DICOM WSI series (one file per level, own directory), 40x, 0.25 mpp; its level-0 file."""
    directory = tmp_path_factory.mktemp("dicom")
    return synth.write_dicom_wsi(directory, vendor_image, synth.Scan(mpp=0.25, magnification=40))


# --- the viewer (issue 10) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def viewer_run(tmp_path_factory: pytest.TempPathFactory):
    """A small workflow run (four slides of two patients: ok, flagged and failed ones, and one
    slide with a known heatmap) in the workflow's layout, made once per session."""
    from viewer_run import build_run

    return build_run(tmp_path_factory.mktemp("viewer_run"))


@pytest.fixture(scope="session")
def viewer_server(viewer_run):
    """A real ``wsiproc view`` process serving :func:`viewer_run`, stopped at the end."""
    from viewer_run import ViewerProcess

    server = ViewerProcess(viewer_run.results)
    yield server
    server.stop()
