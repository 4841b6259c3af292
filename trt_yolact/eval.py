"""COCO box and mask AP of every model x backend x precision on an annotated image set, against torch FP32.

python -m trt_yolact.eval --weights CKPT[,CKPT2] --ann instances.json --images DIR [--backends torch,onnxruntime]
    [--precision fp32,fp16] [--postprocess host,graph] [--json out.json] [--plot ap.png] [--max-ap-drop POINTS]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from pycocotools.coco import COCO

from .command_line import (
    add_postprocess_arguments,
    add_postprocess_place_argument,
    add_runtime_arguments,
    add_weights_argument,
    check_outputs_first,
    int8_options,
    non_negative_float,
    positive_int,
    run_command,
)
from .config import PostprocessConfig, RuntimeOptions
from .errors import UsageError
from .files import atomic_write_bytes
from .metrics.coco_eval import (
    Comparison,
    EvalOptions,
    check_image_dir,
    compare,
    comparison_table,
    load_annotations,
    plot_comparison,
)
from .runtime.open import artifact_backend


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.eval", description=__doc__.splitlines()[0])
    add_weights_argument(parser, several=True)
    add_runtime_arguments(parser, several=True)
    add_postprocess_arguments(parser)
    add_postprocess_place_argument(parser)
    parser.add_argument("--ann", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder of the annotated images")
    parser.add_argument(
        "--allow-missing-images",
        action="store_true",
        help="evaluate the images that can be read, on their own annotations only, when some "
        "listed ones are absent or unreadable (default: that is an error)",
    )
    parser.add_argument("--json", default=None, help="write the comparison rows here")
    parser.add_argument("--plot", default=None, help="bar chart PNG of the APs")
    parser.add_argument("--results", default=None, help="COCO results JSON of the first row")
    parser.add_argument("--max-images", type=positive_int, default=None)
    parser.add_argument(
        "--max-ap-drop",
        type=non_negative_float,
        default=None,
        metavar="POINTS",
        help="exit 1 when a row loses more mask AP than this against its torch FP32 row",
    )
    return parser


def write_outputs(comparison: Comparison, args: argparse.Namespace) -> None:
    """Every output rendered first, then written one right after another (their paths were checked before
    the evaluation)."""
    files: list[tuple[str, bytes]] = []
    if args.json:
        report = {
            "rows": [asdict(r) for r in comparison.rows],
            "skipped": comparison.skipped,
            "missing_images": comparison.missing_images,
        }
        files.append((args.json, json.dumps(report, indent=2, allow_nan=False).encode()))
    if args.plot and comparison.rows:
        files.append((args.plot, plot_comparison(comparison.rows)))
    if args.results and comparison.first_results is not None:
        files.append((args.results, json.dumps(comparison.first_results).encode()))
    for path, data in files:
        atomic_write_bytes(path, data)


def check_outputs(args: argparse.Namespace, ground_truth: COCO, weights: list[str | None]) -> None:
    """Before any model work: no output overwrites an input or another output, and each can be written."""
    flags = (("json", args.json), ("plot", args.plot), ("results", args.results))
    outputs = {f"--{flag} {path}": path for flag, path in flags if path}
    images = (Path(args.images) / image["file_name"] for image in ground_truth.dataset["images"])
    inputs = {
        f"--ann {args.ann}": args.ann,
        **{f"--weights {w}": w for w in weights if w and Path(w).is_file()},
        **{f"the image {path}": path for path in images},
    }
    check_outputs_first(outputs, inputs)


def _options(args: argparse.Namespace) -> EvalOptions:
    runtime = RuntimeOptions(
        device=args.device, config=args.config, cache_dir=args.cache, int8=int8_options(args, "int8" in args.precision)
    )
    return EvalOptions(
        ann_file=args.ann,
        image_dir=args.images,
        backends=args.backends,
        precisions=args.precision,
        runtime=runtime,
        batch_size=args.batch_size,
        max_images=args.max_images,
        allow_missing_images=args.allow_missing_images,
        postprocess=PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k),
        postprocess_places=args.postprocess,
    )


def _gate(comparison: Comparison, max_ap_drop: float) -> int:
    """1 when a row loses more mask AP than allowed against its reference, or a requested configuration could
    not run here (a gate that checks fewer rows than asked passes nothing), else 0."""
    failing = [r for r in comparison.rows if r.mask_ap_change is not None and -r.mask_ap_change > max_ap_drop]
    for r in failing:
        print(
            f"error: {r.model} {r.backend} {r.precision} ({r.postprocess} post-processing) loses "
            f"{-r.mask_ap_change:.2f} mask AP points (allowed {max_ap_drop})",
            file=sys.stderr,
        )
    if comparison.unavailable:
        print(
            f"error: --max-ap-drop cannot check {len(comparison.unavailable)} requested configuration(s) that "
            f"cannot run here (first: {comparison.unavailable[0]})",
            file=sys.stderr,
        )
    return 1 if failing or comparison.unavailable else 0


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    weights: list[str | None] = list(args.weights) if args.weights else [None]
    if args.max_ap_drop is not None and artifact_backend(weights[0]):
        raise UsageError(
            f"--max-ap-drop compares with torch FP32, and {weights[0]} has none: list the checkpoint it was "
            f"made from first (--weights CHECKPOINT,{weights[0]})"
        )
    # Bad annotations, images or outputs fail before any model work.
    ground_truth = load_annotations(args.ann)
    check_outputs(args, ground_truth, weights)
    check_image_dir(args.images)
    comparison = compare(weights, _options(args), ground_truth=ground_truth)
    print(comparison_table(comparison.rows))
    if comparison.missing_images:
        print(
            f"note: {len(comparison.missing_images)} listed image(s) absent or unreadable, left out with their "
            f"annotations (--allow-missing-images); first: {comparison.missing_images[0]}"
        )
    for line in comparison.skipped:
        print(f"skipped: {line}")
    write_outputs(comparison, args)
    return 0 if args.max_ap_drop is None else _gate(comparison, args.max_ap_drop)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
