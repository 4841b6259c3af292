"""Export YOLACT to ONNX (FP32, optionally FP16 and with the post-processing in the graph).

    python -m trt_yolact.export --weights CKPT [--config NAME_OR_FILE] [--out export/] [--name model] [--fp16]
                                [--int8 [--calib DIR|ANN.json:IMAGES] [--int8-exclude PATTERN]]
                                [--postprocess none|graph] [--batch N] [--opset N] [--no-simplify]

``--int8`` writes both INT8 flavours: ``NAME.int8.onnx`` for ONNX Runtime (uint8 activations, CPU) and
``NAME.int8-trt.onnx`` for TensorRT (symmetric int8 Q/DQ around FP16), and their calibration cache.

The graph's interface and metadata: :mod:`trt_yolact.deploy.onnx_format`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import onnx
import torch

from .command_line import (
    add_int8_arguments,
    add_weights_argument,
    int8_options,
    int_in_range,
    positive_int,
    run_command,
)
from .config import MAX_BATCH, PostprocessConfig
from .deploy.artifacts import ExportOptions, export_artifacts
from .deploy.onnx_export import DEFAULT_OPSET, MIN_OPSET
from .deploy.onnx_format import POSTPROCESS_MODES
from .errors import memory_needed_for
from .inference.calibration_images import int8_setup
from .model.checkpoint import ModelSource
from .tables import format_table, human_size


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.export", description=__doc__.splitlines()[0])
    add_weights_argument(parser, checkpoint_only=True)
    parser.add_argument("--out", default="export", help="output folder (default: export/)")
    parser.add_argument(
        "--name", default="model", help="file name stem: NAME.onnx, NAME.fp16.onnx, ... (default: model)"
    )
    parser.add_argument(
        "--batch",
        type=int_in_range(1, MAX_BATCH),
        default=None,
        metavar="N",
        help=f"fixed batch size N, at most {MAX_BATCH} (default: dynamic)",
    )
    max_opset = onnx.defs.onnx_opset_version()
    parser.add_argument(
        "--opset",
        type=int_in_range(MIN_OPSET, max_opset),
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} to {max_opset} (default: {DEFAULT_OPSET})",
    )
    parser.add_argument("--fp16", action="store_true", help="also write FP16 versions (NAME.fp16.onnx)")
    parser.add_argument(
        "--int8", action="store_true", help="also write the INT8 exports (NAME.int8.onnx, NAME.int8-trt.onnx)"
    )
    parser.add_argument(
        "--postprocess",
        choices=POSTPROCESS_MODES,
        default="none",
        help="graph: also write NAME.postprocess.onnx with decode, Fast NMS and masks in the graph",
    )
    parser.add_argument(
        "--max-detections", type=positive_int, default=100, help="detection slots per image with --postprocess graph"
    )
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    add_int8_arguments(parser)
    return parser


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    source = ModelSource.load(args.weights, args.config)  # a bad checkpoint fails before any folder is made
    options = ExportOptions(fuse=False, opset=args.opset, simplify=not args.no_simplify, batch=args.batch)
    post = PostprocessConfig(max_detections=args.max_detections) if args.postprocess == "graph" else None
    int8_settings = int8_options(args, args.int8, "--int8")  # refused without --int8: they would be ignored
    int8 = int8_setup(int8_settings, source) if args.int8 else None
    with memory_needed_for(f"the export at batch {args.batch or 1}", "pass a smaller --batch"):
        written = export_artifacts(source, args.out, args.name, options, fp16=args.fp16, postprocess=post, int8=int8)
    rows = [(str(a.path), human_size(a.size_bytes), a.precision, a.postprocess) for a in written]
    print(format_table(rows, ("file", "size", "precision", "postprocess"), first_column_left=True))
    for artifact in written:
        if artifact.note:
            print(f"note: {artifact.path.name} {artifact.note}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
