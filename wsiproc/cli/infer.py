"""``wsiproc infer SLIDE --out windows.csv``: the streaming sliding-window inference."""

from __future__ import annotations

import argparse
import json

from ..precision import PRECISIONS
from .options import add_stream_options, compile_cache, level_spec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="run a model over every window of a slide; write the CSV")
    p.add_argument("slide", help="slide file")
    p.add_argument("--out", required=True, help="windows.csv to write (windows.json beside it)")
    p.add_argument("--kernel-size", type=int, required=True, help="window side, processing px")
    p.add_argument("--stride", type=int, required=True, help="window step, processing px")
    p.add_argument(
        "--border",
        choices=("valid", "pad"),
        default="valid",
        help="valid: only windows fully inside; pad: cover every pixel (white pad)",
    )
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.25,
        help="skip windows with a smaller tissue fraction (0 = every window, no gating; an "
        "undecodable thumbnail then only leaves the tissue column NaN)",
    )
    p.add_argument(
        "--max-ink",
        type=float,
        default=0.1,
        help="where tissue gating applies (--min-tissue > 0), skip windows with a larger "
        "marker-ink fraction (1 = never)",
    )
    p.add_argument(
        "--model",
        default="builtin:mean-rgb",
        help="builtin:mean-rgb, builtin:stain, or a TorchScript file",
    )
    p.add_argument(
        "--collector",
        metavar="MOD:CLASS",
        help="a StreamCollector subclass to use instead of --model",
    )
    p.add_argument(
        "--plan",
        metavar="LEVEL_JSON",
        help="use the level chosen by `wsiproc level` instead of the options below",
    )
    add_stream_options(p, "windows")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 is exact; bf16 (CPU/GPU) and fp16 (GPU) run weights and activations in that "
        "precision; auto: bf16 where the CPU has AMX-BF16/AVX512-BF16 or the GPU supports it, "
        "else fp32 (the choice is recorded in windows.json)",
    )
    p.add_argument(
        "--on-read-error",
        choices=("fail", "skip"),
        default="fail",
        help="fail: stop at the first unreadable region; skip: NaN outputs for its windows, "
        "counted in windows.json and flagged by QC (an unreadable thumbnail or mask: every "
        "window processed, tissue NaN)",
    )
    p.add_argument(
        "--allow-mpp-mismatch",
        action="store_true",
        help="process at a resolution other than the mpp the model's sidecar declares",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: all available cores)")
    p.add_argument("--patient", default="", help="patient id written in every row")
    p.add_argument("--slide-id", default="", help="slide id written in every row (default: stem)")
    p.add_argument(
        "--reader", choices=("auto", "openslide", "pyvips"), default="auto", help=argparse.SUPPRESS
    )
    p.add_argument("--chunk-px", type=int, default=2048, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..errors import InputTableError
    from ..level import LevelPlan
    from ..models import declared_mpp
    from ..stream.engine import InferRequest, run_inference

    plan = None
    if args.plan:
        try:
            with open(args.plan, encoding="utf-8") as fh:
                plan = LevelPlan.from_dict(json.load(fh))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputTableError(args.plan, f"not a readable level.json: {exc}") from exc
    if args.threads and not args.model.startswith("builtin:"):
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    spec = level_spec(args)
    chosen = (spec.level, spec.mpp, spec.magnification, spec.function)
    if plan is None and all(v is None for v in chosen) and not args.collector:
        # No resolution asked for: the model's own, when its sidecar declares one.
        model_mpp = declared_mpp(args.model)
        if model_mpp is not None:
            spec = replace(spec, mpp=model_mpp)
    req = InferRequest(
        slide=args.slide,
        out=args.out,
        kernel_px=args.kernel_size,
        stride_px=args.stride,
        spec=spec,
        plan=plan,
        border=args.border,
        min_tissue=args.min_tissue,
        max_ink=args.max_ink,
        model=args.model,
        collector=args.collector,
        workers=args.workers,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        patient=args.patient,
        slide_id=args.slide_id,
        quiet=args.quiet,
        reader=args.reader,
        chunk_px=args.chunk_px,
        on_read_error=args.on_read_error,
        mask=args.mask,
        allow_mpp_mismatch=args.allow_mpp_mismatch,
        compile_cache=compile_cache(args),
    )
    run_inference(req)
    return 0
