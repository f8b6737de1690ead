"""The synthetic demo cohort that the README's ``wsiproc demo`` command writes for the workflow.

Kept apart from :mod:`wsiproc.synth`, which makes any image and slide file: this module only
chooses the cohort's slides and writes its sample sheet and config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .atomic import atomic_write, describe_os_error
from .errors import OutputError
from .synth import tissue_image, write_plain_tiff_no_metadata, write_pyramidal_tiff, write_svs


@dataclass(frozen=True)
class DemoSlide:
    """One slide of the demo cohort: who it belongs to, its format and what it shows."""

    patient: str
    slide: str
    filename: str
    writer: str  # "svs", "tiff" (resolution tags) or "tiff-nompp" (no resolution)
    width: int
    height: int
    mpp: float
    magnification: float = 0.0  # objective power; only the svs writer records it
    tissue: bool = True
    pen_mark: bool = False
    sheet_mpp: float | None = None  # written to the sheet's mpp column when the file has none


#: The demo cohort: 4 patients, 6 slides; the 20x and 40x SVS cover 1.5 × 1.0 mm each.
DEMO_SLIDES = (
    DemoSlide("P1", "P1_A", "P1_A.svs", "svs", 3000, 2000, 0.5, 20),
    DemoSlide("P1", "P1_B", "P1_B.tif", "tiff", 2600, 1800, 0.5),
    DemoSlide("P2", "P2_A", "P2_A.svs", "svs", 6000, 4000, 0.25, 40),
    DemoSlide("P3", "P3_A", "P3_A.tif", "tiff", 2000, 1500, 0.5, tissue=False),
    DemoSlide("P4", "P4_A", "P4_A.svs", "svs", 3000, 2000, 0.5, 20, pen_mark=True),
    DemoSlide("P4", "P4_B", "P4_B.tif", "tiff-nompp", 2400, 1600, 0.5, sheet_mpp=0.5),
)


def demo_config(directory: Path) -> dict[str, object]:
    """The demo's workflow config, with absolute paths under ``directory``."""
    return {
        "samples": str(directory / "samples.tsv"),
        "outdir": str(directory / "results"),
        "logdir": str(directory / "logs"),
        "level": {"mpp": 1.0},
        "window": {"kernel_size": 64, "stride": 32, "border": "valid", "min_tissue": 0.25},
        "model": {"path": "builtin:stain", "batch_size": 64, "device": "auto", "precision": "fp32"},
        "loader": {"workers": 1},
        "heatmap": {"mode": "window", "output": None, "colormap": "viridis"},
        "qc": {"blur_threshold": 20.0, "pen_threshold": 0.002, "min_tissue_percent": 0.5},
        # Patch embeddings with the built-in encoder (no weights), in every export layout.
        "features": {
            "enabled": True,
            "encoder": "builtin:tiny",
            "exports": ["stamp", "slideflow", "clam"],
        },
        # A slide model on those features: the built-in demonstration ABMIL (seeded weights,
        # not trained), so the run shows predictions and attention heatmaps end to end.
        "slide_model": {"enabled": True, "model": "builtin:abmil-demo"},
    }


def demo_cohort(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the demo cohort: slides, sample sheet and workflow config under ``directory``.

    Four patients, six slides: Aperio SVS at 20x (0.5 mpp) and 40x (0.25 mpp) covering the
    same physical size, generic pyramidal TIFFs with resolution tags, one glass-only slide,
    one with a pen mark, and one TIFF without resolution whose mpp comes from the sheet.

    Parameters
    ----------
    directory : path-like
        Output directory; ``slides/``, ``samples.tsv`` and ``config.yaml`` are written there.
    seed : int
        Base seed; the same seed gives byte-identical slides.

    Returns
    -------
    pathlib.Path
        Absolute path of ``config.yaml``.

    Raises
    ------
    OutputError
        A file cannot be written.
    """
    directory = Path(directory).resolve()
    slides_dir = directory / "slides"
    try:
        slides_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(slides_dir), describe_os_error(exc)) from exc
    rows = ["patient\tslide\tpath\tmpp"]
    for index, spec in enumerate(DEMO_SLIDES):
        image = tissue_image(
            spec.width,
            spec.height,
            seed=seed * 1000 + index,
            tissue=spec.tissue,
            pen_mark=spec.pen_mark,
            nucleus_radius_px=2.0 / spec.mpp,  # nuclei ~4 µm across at any scan resolution
        )
        relative = f"slides/{spec.filename}"
        if spec.writer == "svs":
            write_svs(directory / relative, image, mpp=spec.mpp, magnification=spec.magnification)
        elif spec.writer == "tiff":
            write_pyramidal_tiff(directory / relative, image, mpp=spec.mpp)
        else:
            write_plain_tiff_no_metadata(directory / relative, image)
        sheet_mpp = "" if spec.sheet_mpp is None else f"{spec.sheet_mpp:g}"
        rows.append(f"{spec.patient}\t{spec.slide}\t{relative}\t{sheet_mpp}")
    with atomic_write(directory / "samples.tsv") as fh:
        fh.write("\n".join(rows) + "\n")
    config_path = directory / "config.yaml"
    with atomic_write(config_path) as fh:
        yaml.safe_dump(demo_config(directory), fh, sort_keys=False)
    return config_path
