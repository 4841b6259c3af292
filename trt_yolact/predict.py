"""Predict instance masks on images and write COCO-format results (and overlays).

python -m trt_yolact.predict [--weights yolact_shapes] [--save-vis DIR] IMAGE_OR_DIR ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from .command_line import (
    add_postprocess_arguments,
    add_runtime_arguments,
    add_weights_argument,
    fraction,
    run_command,
    runtime_options,
)
from .config import PostprocessConfig
from .errors import UsageError
from .files import atomic_write_text, check_writable
from .inference.coco_results import detections_to_coco, image_id_for
from .inference.images import expand_image_paths
from .inference.predictor import ImageResult, Predictor, confident, predict_paths
from .inference.sources import open_runner
from .inference.visualize import draw_detections
from .metrics.coco_eval import load_annotations


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.predict", description=__doc__.splitlines()[0])
    add_weights_argument(parser)
    add_runtime_arguments(parser)
    add_postprocess_arguments(parser)
    parser.add_argument("--out", default="results.json", help="COCO results JSON (default: results.json)")
    parser.add_argument("--save-vis", default=None, metavar="DIR", help="write overlay images here")
    parser.add_argument("--vis-threshold", type=fraction, default=0.3, help="draw detections scoring at least this")
    parser.add_argument("--ann", default=None, help="COCO annotations whose image ids to use for matching file names")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    return parser


def _paths(args: argparse.Namespace) -> list[Path]:
    """The images to predict; every input and output checked before any model work."""
    paths = expand_image_paths(args.inputs)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"{len(missing)} input(s) do not exist: {', '.join(missing[:5])}")
    if not paths:
        raise UsageError("no images found in the given inputs")
    check_writable(args.out)
    if args.save_vis:
        check_writable(args.save_vis, folder=True)
    return paths


def _write_overlay(folder: Path, item: ImageResult, threshold: float, class_names: tuple[str, ...]) -> None:
    canvas = draw_detections(item.image, confident(item.detections, threshold), class_names)
    target = folder / f"{item.path.stem}.png"
    if not cv2.imwrite(str(target), canvas):
        raise OSError(5, "cannot write the overlay", str(target))


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    paths = _paths(args)
    ids_by_name = None
    if args.ann:
        ids_by_name = {img["file_name"]: img["id"] for img in load_annotations(args.ann).dataset["images"]}
    runner, config = open_runner(args.weights, runtime_options(args))
    if args.save_vis:
        Path(args.save_vis).mkdir(parents=True, exist_ok=True)
    post = PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k)
    predictor = Predictor(runner, config, post)
    results: list[dict] = []
    skipped: list[str] = []
    with runner, tqdm(total=len(paths), desc="predict", unit="img") as progress:
        for item in predict_paths(predictor, paths, args.batch_size):
            progress.update(1)
            if item.error is not None:
                skipped.append(item.error)
                continue
            image_id = image_id_for(item.path, item.index, ids_by_name)
            results.extend(detections_to_coco(item.detections, image_id, config.category_ids, item.path.name))
            if args.save_vis:
                _write_overlay(Path(args.save_vis), item, args.vis_threshold, config.class_names)
    for message in skipped:
        tqdm.write(f"skipped: {message}", file=sys.stderr)
    atomic_write_text(args.out, json.dumps(results))
    ms = predictor.times.per_image_ms()
    print(
        f"{predictor.times.images} images, {len(results)} detections -> {args.out}"
        + (f", overlays in {args.save_vis}/" if args.save_vis else "")
        + f" ({ms['total']:.1f} ms/img: pre {ms['pre']:.1f}, infer {ms['infer']:.1f}, post {ms['post']:.1f})"
    )
    if skipped:
        print(f"error: {len(skipped)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
