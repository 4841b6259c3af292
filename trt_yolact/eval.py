"""COCO box and mask AP of every model x backend x precision on an annotated image set, against torch FP32.

python -m trt_yolact.eval --weights CKPT[,CKPT2] --ann instances.json --images DIR [--backends torch,onnxruntime]
    [--precision fp32,fp16] [--json out.json] [--plot ap.png] [--max-ap-drop POINTS]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

import torch

from .command_line import (
    add_postprocess_arguments,
    add_runtime_arguments,
    add_weights_argument,
    positive_int,
)
from .config import PostprocessConfig
from .errors import run_command
from .files import atomic_write_text
from .metrics.coco_eval import Comparison, EvalOptions, compare, comparison_table, load_annotations, plot_comparison


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.eval", description=__doc__.splitlines()[0])
    add_weights_argument(parser, several=True)
    add_runtime_arguments(parser, several=True)
    add_postprocess_arguments(parser)
    parser.add_argument("--ann", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder of the annotated images")
    parser.add_argument("--json", default=None, help="write the comparison rows here")
    parser.add_argument("--plot", default=None, help="bar chart PNG of the APs")
    parser.add_argument("--results", default=None, help="COCO results JSON of the first row")
    parser.add_argument("--max-images", type=positive_int, default=None)
    parser.add_argument(
        "--max-ap-drop",
        type=float,
        default=None,
        metavar="POINTS",
        help="exit 1 when a row loses more mask AP than this against torch FP32",
    )
    return parser


def write_outputs(comparison: Comparison, args: argparse.Namespace) -> None:
    if args.json:
        rows = [asdict(r) for r in comparison.rows]
        atomic_write_text(args.json, json.dumps({"rows": rows, "skipped": comparison.skipped}, indent=2))
    if args.plot and comparison.rows:
        plot_comparison(comparison.rows, args.plot)
    if args.results and comparison.first_results is not None:
        atomic_write_text(args.results, json.dumps(comparison.first_results))


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    load_annotations(args.ann)  # bad annotations fail before any model work
    options = EvalOptions(
        ann_file=args.ann,
        image_dir=args.images,
        backends=args.backends,
        precisions=args.precision,
        config=args.config,
        device=args.device,
        cache_dir=args.cache,
        batch_size=args.batch_size,
        max_images=args.max_images,
        postprocess=PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k),
    )
    comparison = compare(args.weights.split(",") if args.weights else [None], options)
    for message in comparison.skipped_images:
        print(f"skipped image: {message}", file=sys.stderr)
    print(comparison_table(comparison.rows))
    for line in comparison.skipped:
        print(f"skipped: {line}")
    write_outputs(comparison, args)
    if args.max_ap_drop is None:
        return 0
    failing = [r for r in comparison.rows if -r.mask_ap_change > args.max_ap_drop]
    for r in failing:
        print(
            f"error: {r.model} {r.backend} {r.precision} loses {-r.mask_ap_change:.2f} mask AP points "
            f"(allowed {args.max_ap_drop})",
            file=sys.stderr,
        )
    return 1 if failing else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
