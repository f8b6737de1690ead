"""``wsiproc features SLIDE --encoder ENC --out features.h5``: patch embeddings for MIL.

The same stream as ``wsiproc infer`` (grid, level choice, tissue gating, loaders, checkpoint
and resume); the encoder's sidecar gives the defaults (patch size, mpp) and refuses what
contradicts it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .options import add_stream_options, compile_cache, level_spec

MPP_TOLERANCE = 0.02
"""A processing mpp within 2% of the encoder's counts as the same (as for models)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="embed every tissue patch of a slide; write features.h5")
    p.add_argument("slide", help="slide file")
    p.add_argument(
        "--encoder",
        required=True,
        help="builtin:tiny, or a TorchScript (.pt) / torch.export (.pt2) file or a timm weights "
        "file (.safetensors, .bin; sidecar key timm) with a sidecar JSON",
    )
    p.add_argument("--out", required=True, help="features.h5 to write (features.json beside it)")
    p.add_argument(
        "--patch-size", type=int, help="patch side, processing px (default: the sidecar's)"
    )
    p.add_argument("--stride", type=int, help="patch step, processing px (default: patch size)")
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.25,
        help="skip patches with a smaller tissue fraction (0 = embed all)",
    )
    add_stream_options(p, "patches")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "auto"),
        help="encoder precision (default: the sidecar's; auto: bf16 where fast, else fp32)",
    )
    p.add_argument(
        "--export",
        action="append",
        choices=("stamp", "slideflow", "clam"),
        default=[],
        help="also write this tool's layout under EXPORT_DIR/<tool>/ (repeatable)",
    )
    p.add_argument("--export-dir", help="where --export writes (default: beside --out)")
    p.add_argument("--threads", type=int, help="torch threads (default: all available cores)")
    p.add_argument("--patient", default="", help="patient id recorded in features.json")
    p.add_argument("--slide-id", default="", help="slide id (coords attribute name; default stem)")
    p.add_argument(
        "--reader", choices=("auto", "openslide", "pyvips"), default="auto", help=argparse.SUPPRESS
    )
    p.add_argument("--chunk-px", type=int, default=2048, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run)


def _where(source: str) -> str:
    """How an error names the sidecar of ``source``."""
    from ..models import BUILTIN_PREFIX, sidecar_path

    return source if source.startswith(BUILTIN_PREFIX) else str(sidecar_path(Path(source)))


def _refuse(flag: str, given: str, source: str, key: str, declared: str) -> None:
    """One line naming the flag's value and the sidecar's."""
    from ..errors import ConfigError

    raise ConfigError(flag, f"{given} contradicts {_where(source)} {key} {declared}")


def run(args: argparse.Namespace) -> int:
    from ..batch.keep import load_once
    from ..errors import ConfigError
    from ..features.encoder import encoder_spec
    from ..features.export import export_features
    from ..level import select_level
    from ..slide import Slide
    from ..stream.engine import run_inference
    from ..stream.request import InferRequest

    # A bad sidecar fails before the slide is opened (inside a batch: fails the batch).
    enc = load_once(("encoder_spec", args.encoder), lambda: encoder_spec(args.encoder))
    if enc.timm is not None:  # --compile, or timm missing: refused before the slide opens
        from ..features.timm_encoder import check_usable

        check_usable(Path(args.encoder), enc, compiling=compile_cache(args) is not None)
    patch = args.patch_size or enc.patch_size
    if args.patch_size is not None and args.patch_size != enc.patch_size:
        _refuse(
            "--patch-size", str(args.patch_size), args.encoder, "patch_size", str(enc.patch_size)
        )
    stride = args.stride or patch
    if stride < 1:
        raise ConfigError("stride", f"must be >= 1, got {stride}")
    spec = level_spec(args)
    chosen = (spec.level, spec.mpp, spec.magnification, spec.function)
    plan = None
    if enc.mpp is not None:
        if all(v is None for v in chosen):
            spec = replace(spec, mpp=enc.mpp)
        elif spec.mpp is not None:
            if abs(spec.mpp / enc.mpp - 1) > MPP_TOLERANCE:
                _refuse("--mpp", f"{spec.mpp:g}", args.encoder, "mpp", f"{enc.mpp:g}")
        else:  # a level or magnification: check the resolution it gives
            with Slide(args.slide, reader=args.reader) as slide:
                plan = select_level(slide.info, spec)
            if plan.proc_mpp is not None and abs(plan.proc_mpp / enc.mpp - 1) > MPP_TOLERANCE:
                given = f"{plan.proc_mpp:.4g} µm/px (level {plan.level})"
                _refuse("resolution", given, args.encoder, "mpp", f"{enc.mpp:g}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    req = InferRequest(
        slide=args.slide,
        out=args.out,
        kernel_px=patch,
        stride_px=stride,
        spec=spec,
        plan=plan,
        min_tissue=args.min_tissue,
        model=args.encoder,
        workers=args.workers,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision or enc.precision,
        patient=args.patient,
        slide_id=args.slide_id,
        quiet=args.quiet,
        reader=args.reader,
        chunk_px=args.chunk_px,
        mask=args.mask,
        allow_mpp_mismatch=True,  # checked above against the encoder's sidecar
        compile_cache=compile_cache(args),
        output="h5",
    )
    run_inference(req)
    if args.export:
        out_dir = args.export_dir or str(Path(args.out).parent)
        export_features(args.out, list(dict.fromkeys(args.export)), out_dir)
    return 0
