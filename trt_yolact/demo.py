"""Live instance segmentation on a video file, a camera or a stream, with a threaded pipeline.

    python -m trt_yolact.demo --source FILE|CAMERA_INDEX|RTSP_URL [--weights CKPT|X.onnx|X.engine]
        [--config NAME_OR_FILE] [--backend torch|onnxruntime|tensorrt] [--device cpu|cuda] [--out out.mp4]
        [--batch N] [--no-display] [--score-threshold T] [--max-frames N] [--pipeline static|dynamic|graph]

The pipeline: :mod:`trt_yolact.inference.stream`. Exit codes: 0 at the end of the stream, 130 after Ctrl-C,
143 after SIGTERM (which ends it as cleanly), 2 for bad input, 1 when the pipeline fails. The demo's score
threshold defaults to 0.3 (predict's to 0).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import cv2

from .command_line import (
    add_postprocess_arguments,
    add_runtime_arguments,
    add_weights_argument,
    positive_int,
    run_command,
    runtime_options,
)
from .config import PostprocessConfig
from .errors import TrtYolactError, first_line
from .inference.predictor import PIPELINES, Predictor
from .inference.sources import open_runner
from .inference.stream import PipelineError, run_demo
from .inference.video_io import VideoSource


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m trt_yolact.demo",
        description=__doc__.splitlines()[0],
        epilog="Ctrl-C stops and keeps a playable video; press it twice to drop the frames in flight.",
    )
    parser.add_argument("--source", required=True, help="video file, camera index (0) or stream URL (rtsp://...)")
    add_weights_argument(parser)
    add_runtime_arguments(parser)
    add_postprocess_arguments(parser, score_threshold=0.3, batch_size=1)
    # The demo's own name for --batch-size (same destination).
    parser.add_argument("--batch", dest="batch_size", type=positive_int, metavar="N", help="alias of --batch-size")
    parser.add_argument("--out", default=None, help="write the annotated video here (.mp4)")
    parser.add_argument("--no-display", action="store_true", help="do not open a window (automatic without a display)")
    parser.add_argument(
        "--max-frames", type=positive_int, default=None, metavar="N", help="stop after reading N frames"
    )
    parser.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=None,
        help="static: uint8 frames uploaded once and pre-processed on the device, static-shape post-processing, "
        "the next batch's upload overlapping this one's inference; graph: the same replayed from CUDA graphs "
        "(torch on a GPU); dynamic: the reference pre- and post-processing. The same detections; default: "
        "static on a GPU, dynamic on the CPU (where the static path's fixed sizes cost more than they save)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    source = VideoSource.open(args.source)  # a bad source fails before any model is loaded
    try:
        runner, config = open_runner(args.weights, runtime_options(args, max_batch=args.batch_size))
        post = PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k)
        pipeline = args.pipeline or ("static" if runner.device.type == "cuda" else "dynamic")
        predictor = Predictor(runner, config, post, pipeline=pipeline)
    except BaseException:
        source.capture.release()
        raise
    try:
        with runner:
            stats = run_demo(
                predictor,
                source,
                args.out,
                batch=args.batch_size,
                display=not args.no_display,
                max_frames=args.max_frames,
                progress=True,
            )
    except PipelineError as exc:
        if not isinstance(exc.__cause__, (TrtYolactError, OSError)):
            raise  # a bug in a stage: keep its traceback
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    if args.out and stats.output is None:
        print(f"notice: no frame was written, {args.out} was not created", file=sys.stderr)
    print(stats.summary())
    return 143 if stats.terminated else 130 if stats.interrupted else 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    # OpenCV's and FFmpeg's own warnings would repeat our one-line errors (set the variable to see them).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
