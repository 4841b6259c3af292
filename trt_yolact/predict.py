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

from .command_line import add_postprocess_arguments, add_runtime_arguments, add_weights_argument, fraction
from .config import PostprocessConfig
from .errors import UsageError, run_command
from .files import atomic_write_text
from .inference.coco_results import detections_to_coco, image_id_for
from .inference.images import expand_image_paths
from .inference.predictor import Predictor, confident, predict_paths
from .inference.sources import open_runner
from .inference.visualize import draw_detections
from .metrics.coco_eval import load_annotations


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.predict", description=__doc__.splitlines()[0])
    add_weights_argument(parser)
    add_runtime_arguments(parser)
    add_postprocess_arguments(parser)
    parser.add_argument("--out", default="results.json", help="COCO results JSON (default: results.json)")
    parser.add_argument("--save-vis", default=None, metavar="DIR", help="write overlay images here")
    parser.add_argument("--vis-threshold", type=fraction, default=0.3, help="draw detections scoring at least this")
    parser.add_argument("--ann", default=None, help="COCO annotations whose image ids to use for matching file names")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    return parser


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    runner, config = open_runner(args.weights, args.backend, args.precision, args.config, args.device, args.cache)
    post = PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k)
    predictor = Predictor(runner, config, post)
    ids_by_name = (
        {img["file_name"]: img["id"] for img in load_annotations(args.ann).dataset["images"]} if args.ann else None
    )
    paths = expand_image_paths(args.inputs)
    if not paths:
        raise UsageError("no images found in the given inputs")
    vis_dir = Path(args.save_vis) if args.save_vis else None
    if vis_dir:
        vis_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    skipped: list[str] = []
    with runner, tqdm(total=len(paths), desc="predict", unit="img") as progress:
        for item in predict_paths(predictor, paths, args.batch_size, skipped):
            image_id = image_id_for(item.path, item.index, ids_by_name)
            results.extend(detections_to_coco(item.detections, image_id, config.category_ids, item.path.name))
            if vis_dir:
                shown = confident(item.detections, args.vis_threshold)
                cv2.imwrite(
                    str(vis_dir / f"{item.path.stem}.png"), draw_detections(item.image, shown, config.class_names)
                )
            progress.update(item.index + 1 - progress.n)
        progress.update(len(paths) - progress.n)
    for message in skipped:
        tqdm.write(f"skipped: {message}", file=sys.stderr)
    atomic_write_text(args.out, json.dumps(results))
    ms = predictor.times.per_image_ms()
    print(
        f"{predictor.times.images} images, {len(results)} detections -> {args.out}"
        + (f", overlays in {vis_dir}/" if vis_dir else "")
        + f" ({ms['total']:.1f} ms/img: pre {ms['pre']:.1f}, infer {ms['infer']:.1f}, post {ms['post']:.1f})"
    )
    if skipped:
        print(f"error: {len(skipped)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
