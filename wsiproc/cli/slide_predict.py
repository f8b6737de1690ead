"""``wsiproc slide-predict``: features.h5 + slide model -> slide.json, attention CSV + record.

Order of work: check the h5 header and the model's sidecar (cheap refusals first), read the bag
once into the model's precision, run, check the outputs, then write the attention CSV and its
record and, last, ``slide.json``: every file appears atomically and only after the model's
output passed its checks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..record import record_path

DEFAULT_ATTENTION_THRESHOLD = 0.25
"""Share of attention mass on ink/background (tissue < 0.5) above which a slide is flagged."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``slide-predict`` subcommand."""
    p = sub.add_parser(
        "slide-predict",
        help="run a slide-level (attention-MIL) model on features.h5",
        description=(
            "Run a slide model (TorchScript/.pt2 + sidecar JSON, or builtin:abmil-demo) on the "
            "patch embeddings of one slide; write the prediction (slide.json) and the attention "
            "of every patch as a windows CSV that 'wsiproc heatmap' and 'wsiproc view' read."
        ),
    )
    p.add_argument("features", metavar="FEATURES_H5", help="features.h5 (TRIDENT layout)")
    p.add_argument("--model", required=True, help="slide model file or builtin:abmil-demo")
    p.add_argument("--out", required=True, help="slide.json to write")
    p.add_argument(
        "--attention-out",
        required=True,
        help="attention CSV to write (its record goes beside it with .json)",
    )
    p.add_argument(
        "--allow-encoder-mismatch",
        action="store_true",
        help="run even if the features come from another encoder than the model's",
    )
    p.add_argument("--patient", help="patient id (default: the slide id)")
    p.add_argument("--slide-id", help="slide id (default: the h5's coords 'name', else its stem)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default: auto)")
    p.add_argument(
        "--attention-threshold",
        type=float,
        default=DEFAULT_ATTENTION_THRESHOLD,
        help="flag the slide when more than this share of attention lies on windows with "
        f"tissue < 0.5 (default: {DEFAULT_ATTENTION_THRESHOLD})",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Predict one slide; raise WsiprocError subclasses on bad input or failed writes."""
    from ..batch.keep import load_once
    from ..slidemodel.features import grid_cells, read_bag, read_header
    from ..slidemodel.load import load_slide_model
    from ..slidemodel.outputs import (
        Prediction,
        attention_record,
        off_tissue_share,
        write_attention_csv,
    )

    if not 0.0 <= args.attention_threshold <= 1.0:
        raise ConfigError("--attention-threshold", "must be between 0 and 1")
    head = read_header(args.features)
    cells = grid_cells(head)
    # Loaded once per process inside a batch of slides (wsiproc batch), else per call.
    model = load_once(
        ("slide_model", args.model, args.device, head.dim),
        lambda: load_slide_model(args.model, device=args.device, dim=head.dim),
        f"slide model {args.model} on {args.device}",
    )
    model.check_features(head.dim, head.encoder, allow_mismatch=args.allow_encoder_mismatch)
    output = None  # no patches (glass only): nothing to predict, flagged no_patches
    if head.n:
        bag = read_bag(head, model.dtype)
        output = model(bag, head.coords)
        del bag
    scores = output.attention if output is not None else np.zeros((0, 1))
    slide_id = args.slide_id or head.name or Path(args.features).parent.name
    patient = args.patient or slide_id
    heads = model.head_names(scores.shape[1])
    write_attention_csv(
        args.attention_out,
        head,
        cells,
        scores,
        heads=heads,
        slide_id=slide_id,
        patient=patient,
    )
    record = attention_record(
        head, cells, heads=heads, slide_id=slide_id, patient=patient, model=model.spec.name
    )
    record.write(record_path(args.attention_out))
    prediction = Prediction(
        slide_id=slide_id,
        patient=patient,
        model=model,
        output=output,
        n_patches=head.n,
        features=str(args.features),
        off_tissue=off_tissue_share(scores, head.tissue),
        attention_threshold=args.attention_threshold,
    )
    prediction.write(args.out)
    data = prediction.to_dict()
    verdict = data["predicted_class"] or ", ".join(f"{v:.4g}" for v in data["logits"] or [])
    verdict = verdict or "no patches, not predicted"
    print(f"slide-predict: {slide_id}: {head.n} patches, {model.spec.name} -> {verdict}")
    return 0
