"""Predict instance masks on images and write COCO-format results.

    python -m trt_yolact.predict [--weights yolact_shapes] [--save-vis DIR] IMAGE_OR_DIR ...
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import YolactConfig
from .errors import first_line
from .files import atomic_write_text
from .images import expand_image_paths, read_image
from .postprocess import Detections, PostprocessConfig, postprocess
from .preprocess import ImageError, preprocess
from .results import detections_to_coco
from .runners import Runner


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over calls (device work synchronised before each reading)."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    images: int = 0

    def add(self, other: "StageTimes") -> None:
        self.preprocess += other.preprocess
        self.inference += other.inference
        self.postprocess += other.postprocess
        self.images += other.images

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.postprocess


@dataclass
class Predictor:
    """Images -> detections with any runner: preprocess, infer, batched post-processing."""

    runner: Runner
    config: YolactConfig
    postprocess_config: PostprocessConfig = field(default_factory=PostprocessConfig)
    times: StageTimes = field(default_factory=StageTimes)

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        clock = time.perf_counter
        start = clock()
        batch, sizes = preprocess(images, self.config, self.runner.device)
        self.runner.synchronize()
        after_pre = clock()
        raw = self.runner(batch)
        self.runner.synchronize()
        after_infer = clock()
        detections = postprocess(raw, sizes, self.postprocess_config)
        self.runner.synchronize()
        end = clock()
        self.times.add(StageTimes(after_pre - start, after_infer - after_pre, end - after_infer, len(images)))
        return detections


def keep_confident(detections: Detections, threshold: float) -> Detections:
    """The detections scoring at least ``threshold`` (they are sorted best first)."""
    n = int((detections.scores >= threshold).sum())
    rel = detections.boxes_relative
    return Detections(detections.boxes[:n], detections.scores[:n], detections.classes[:n], detections.masks[:n],
                      detections.image_size, None if rel is None else rel[:n])  # fmt: skip


def image_id_for(path: Path, index: int, ids_by_name: dict[str, int] | None) -> int:
    """The annotation's id when known, else a numeric file stem (COCO style), else the 1-based index."""
    if ids_by_name is not None and path.name in ids_by_name:
        return ids_by_name[path.name]
    if re.fullmatch(r"\d+", path.stem):
        return int(path.stem)
    return index + 1


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="checkpoint, embedded model name (default: yolact_shapes), .onnx or .engine")
    parser.add_argument("--config", default=None, help="official config name or .yaml/.json file (default: from the checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, default=0.0, help="drop detections scoring below this")
    parser.add_argument("--top-k", type=int, default=100, help="at most this many detections per image")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.predict", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default=None,
                        help="default: torch for checkpoints, implied by .onnx/.engine files")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--cache", default="export/cache", help="folder for ONNX/engines made for --backend")
    parser.add_argument("--out", default="results.json", help="COCO results JSON (default: results.json)")
    parser.add_argument("--save-vis", default=None, metavar="DIR", help="write overlay images here")
    parser.add_argument("--vis-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    parser.add_argument("--ann", default=None, help="COCO annotations whose image ids to use for matching file names")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    return parser


@torch.no_grad()
def main(argv: Sequence[str] | None = None) -> int:
    from .backends import open_runner

    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        print("error: --batch-size and --top-k must be at least 1", file=sys.stderr)
        return 2
    try:
        runner, config = open_runner(args.weights, args.backend, args.precision, args.config, args.device, args.cache)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    predictor = Predictor(runner, config, PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k))
    ids_by_name = None
    if args.ann:
        with open(args.ann) as handle:
            ids_by_name = {img["file_name"]: img["id"] for img in json.load(handle)["images"]}

    paths = expand_image_paths(args.inputs)
    if not paths:
        print("error: no images found in the given inputs", file=sys.stderr)
        return 2
    vis_dir = Path(args.save_vis) if args.save_vis else None
    if vis_dir:
        vis_dir.mkdir(parents=True, exist_ok=True)
        from .visualize import draw_detections
    results: list[dict] = []
    failures = 0
    progress = tqdm(total=len(paths), desc="predict", unit="img")
    for start in range(0, len(paths), args.batch_size):
        chunk, images = [], []
        for index in range(start, min(start + args.batch_size, len(paths))):
            try:
                images.append(read_image(paths[index]))
                chunk.append(index)
            except ImageError as exc:
                failures += 1
                tqdm.write(f"skipped: {exc}", file=sys.stderr)
        if images:
            for index, image, dets in zip(chunk, images, predictor(images)):
                path = paths[index]
                results.extend(detections_to_coco(dets, image_id_for(path, index, ids_by_name), config.category_ids, path.name))
                if vis_dir:
                    import cv2

                    shown = keep_confident(dets, args.vis_threshold)
                    cv2.imwrite(str(vis_dir / f"{path.stem}.png"), draw_detections(image, shown, config.class_names))
        progress.update(min(args.batch_size, len(paths) - start))
    progress.close()
    atomic_write_text(args.out, json.dumps(results))
    times = predictor.times
    per_image = 1000 * times.total / max(times.images, 1)
    print(
        f"{times.images} images, {len(results)} detections -> {args.out}"
        + (f", overlays in {vis_dir}/" if vis_dir else "")
        + f" ({per_image:.1f} ms/img: pre {1000 * times.preprocess / max(times.images, 1):.1f}, "
        f"infer {1000 * times.inference / max(times.images, 1):.1f}, post {1000 * times.postprocess / max(times.images, 1):.1f})"
    )
    if failures:
        print(f"error: {failures} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
