"""Predict instance masks on images and write COCO-format results (and overlays).

python -m trt_yolact.predict [--weights yolact_shapes] [--save-vis DIR] IMAGE_OR_DIR ...
"""

from __future__ import annotations

import argparse
import contextlib
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
    check_outputs_apart,
    fraction,
    run_command,
    runtime_options,
)
from .config import PostprocessConfig
from .errors import ImageError, UsageError
from .files import atomic_write_text, check_writable, shown, staged_folder
from .inference.coco_results import detections_to_coco, image_ids
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
    missing = [shown(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"{len(missing)} input(s) do not exist: {', '.join(missing[:5])}")
    if not paths:
        raise UsageError("no images found in the given inputs")
    check_writable(args.out)
    if args.save_vis:
        check_writable(args.save_vis, folder=True)
    return paths


def _ids_by_name(ann: str) -> dict[str, int | None]:
    """File name -> image id of the annotations; None for a name several images share."""
    ids: dict[str, int | None] = {}
    for image in load_annotations(ann, evaluation=False).dataset["images"]:
        name = Path(image["file_name"]).name
        ids[name] = image["id"] if name not in ids else None
    return ids


def overlay_name(image: Path) -> str:
    return f"{image.stem}.png"


def _overlay_targets(paths: list[Path], folder: str | None) -> list[Path]:
    """Where each image's overlay ends up; two images may not share one (the second would replace the first)."""
    if not folder:
        return []
    targets = [Path(folder) / overlay_name(path) for path in paths]
    first_for: dict[Path, Path] = {}
    for path, target in zip(paths, targets):
        if target in first_for:
            raise UsageError(
                f"{shown(first_for[target])} and {shown(path)} would both write the overlay {shown(target)}: "
                "predict them in separate runs with their own --save-vis"
            )
        if target.is_dir():
            raise UsageError(f"cannot write {shown(target)}: a folder of that name is in the way")
        first_for[target] = path
    return targets


def _check_apart(args: argparse.Namespace, paths: list[Path], targets: list[Path]) -> None:
    outputs = {f"--out {shown(args.out)}": args.out}
    outputs.update({f"--save-vis overlay {shown(t)}": t for t in targets})
    inputs = {f"the input {shown(p)}": p for p in paths}
    if args.ann:
        inputs[f"--ann {shown(args.ann)}"] = args.ann
    check_outputs_apart(outputs, inputs)


def _write_overlay(folder: Path, item: ImageResult, threshold: float, class_names: tuple[str, ...]) -> None:
    canvas = draw_detections(item.image, confident(item.detections, threshold), class_names)
    # Encoded here and written by Python: OpenCV's own file functions cannot take every path the OS can.
    encoded, data = cv2.imencode(".png", canvas)
    target = folder / overlay_name(item.path)
    if not encoded:
        raise OSError(5, "cannot write the overlay", shown(target))
    target.write_bytes(data.tobytes())


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    paths = _paths(args)
    ids = image_ids(paths, _ids_by_name(args.ann) if args.ann else None)
    _check_apart(args, paths, _overlay_targets(paths, args.save_vis))
    runner, config = open_runner(args.weights, runtime_options(args))
    post = PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k)
    predictor = Predictor(runner, config, post)
    results: list[dict] = []
    skipped: list[str] = []
    # Overlays go to a private folder moved into --save-vis on success: a failed or interrupted run leaves none.
    overlays = staged_folder(args.save_vis, UsageError) if args.save_vis else contextlib.nullcontext()
    with runner, overlays as staging:
        with tqdm(total=len(paths), desc="predict", unit="img") as progress:
            for item in predict_paths(predictor, paths, args.batch_size):
                progress.update(1)
                if item.error is not None:
                    skipped.append(item.error)
                    continue
                entries = detections_to_coco(item.detections, ids[item.index], config.category_ids, item.path.name)
                results.extend(entries)
                if staging is not None:
                    _write_overlay(staging, item, args.vis_threshold, config.class_names)
        if len(skipped) == len(paths):
            raise ImageError(f"none of the {len(paths)} image(s) could be read (first: {skipped[0]})")
        atomic_write_text(args.out, json.dumps(results))  # before the overlays move: both or neither
    _report(args, predictor, results, skipped)
    return 1 if skipped else 0


def _report(args: argparse.Namespace, predictor: Predictor, results: list[dict], skipped: list[str]) -> None:
    for message in skipped:
        tqdm.write(f"skipped: {message}", file=sys.stderr)
    ms = predictor.times.per_image_ms()
    print(
        f"{predictor.times.images} images, {len(results)} detections -> {shown(args.out)}"
        + (f", overlays in {shown(args.save_vis)}/" if args.save_vis else "")
        + f" ({ms['total']:.1f} ms/img: pre {ms['pre']:.1f}, infer {ms['infer']:.1f}, post {ms['post']:.1f})"
    )
    if skipped:
        print(f"error: {len(skipped)} image(s) could not be read", file=sys.stderr)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
