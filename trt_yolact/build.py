"""The whole deployment pipeline in one command.

    python -m trt_yolact.build [--weights CKPT|yolact_shapes] [--fuse/--no-fuse] [--precision fp16|fp32|int8]
                               [--batch 1,4,8] [--tf32/--no-tf32] [--postprocess host|graph] [--out export/]
                               [--engines engines/] [--triton DIR]
                               [--calib DIR|ANN.json:IMAGES] [--int8-exclude PATTERN] [--int8-max-ap-drop D]

checkpoint -> fuse -> ONNX (simplified) -> FP16 ONNX [-> INT8 ONNX, both flavours] -> TensorRT engine (where
TensorRT and a GPU exist; otherwise one line says why it is skipped) -> every artifact verified against the
PyTorch reference on sample images (raw-output error, detection agreement) -> a build report (table + JSON)
[-> a Triton Inference Server model repository].
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .command_line import (
    add_int8_arguments,
    add_weights_argument,
    int8_options,
    non_empty,
    parsed_by,
    positive_int,
    run_command,
)
from .config import PRECISIONS
from .deploy.tensorrt_build import BuildProfile
from .errors import CheckpointError
from .files import atomic_write_text, check_writable
from .metrics.int8_sensitivity import SensitivityReport, write_report
from .metrics.verify import BuildOptions, BuildReport, build_and_verify
from .model.checkpoint import EMBEDDED_MODELS, embedded_model_path, model_name
from .runtime.open import artifact_backend


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = BuildOptions()
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.build", description=__doc__.splitlines()[0])
    # An empty --weights is a mistake, not a request for the default (every embedded model).
    add_weights_argument(parser, checkpoint_only=True, default_text="every embedded demo model", value_type=non_empty)
    parser.add_argument(
        "--fuse", action=argparse.BooleanOptionalAction, default=d.fuse, help="fold BN into convs (default: on)"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=d.precision, help=f"of the engine (default: {d.precision})"
    )
    parser.add_argument(
        "--batch",
        type=parsed_by(BuildProfile.parse),
        default=d.profile,
        help=f"TensorRT profile min,opt,max batch (default {d.profile})",
    )
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=d.tf32,
        help="let the engine's FP32 layers use TF32 (default: off, so that an FP32 engine is a true FP32 one)",
    )
    parser.add_argument(
        "--postprocess",
        choices=("host", "graph"),
        default="host",
        help="graph: also export the ONNX with in-graph NMS and mask assembly (FP32, FP16, INT8 TensorRT flavour) "
        "and build its engine",
    )
    parser.add_argument("--out", default=str(d.out_dir), help=f"ONNX and report folder (default: {d.out_dir}/)")
    parser.add_argument(
        "--engines", default=str(d.engine_dir), help=f"TensorRT engine folder (default: {d.engine_dir}/)"
    )
    parser.add_argument(
        "--triton",
        metavar="DIR",
        type=non_empty,
        default=None,
        help="also lay the artifacts out as a Triton Inference Server model repository in DIR",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=d.repeats, help=f"timed runs per artifact (default: {d.repeats})"
    )
    add_int8_arguments(parser, search=True)
    return parser


def default_weights() -> list[str]:
    shipped = [name for name in EMBEDDED_MODELS if embedded_model_path(name).is_file()]
    if not shipped:
        raise CheckpointError("no embedded demo model is shipped in this installation: pass --weights")
    return shipped


def print_report(report: BuildReport, report_path: Path) -> None:
    fused = "fused" if report.fused else "not fused"
    print(
        f"\n{report.model}  ({report.config}, {report.params / 1e6:.2f} M params, "
        f"{report.macs / 1e9:.2f} GMACs, {fused}, {report.seconds:.0f} s)"
    )
    print(report.table())
    for line in report.skipped:
        print(line)
    for check in report.artifacts:
        for tool, command in check.equivalent_commands.items():
            print(f"{tool} equivalent of {check.name}: {command}")
    if report.triton_models:
        print(f"Triton model repository: {', '.join(report.triton_models)}")
    if report.int8 is not None:
        print(f"INT8 calibrated on {report.int8['calibration']} ({report.int8['settings']['method']})")
    print(f"report: {report_path}")


def print_sensitivity(reports: list[SensitivityReport], out_dir: Path) -> None:
    for report in reports:
        print(f"\nINT8 sensitivity, {report.flavour} flavour (mask AP change in points)")
        print(report.table())
        print(report.summary())
        json_path, png_path = write_report(report, out_dir / f"{report.model}.int8-{report.flavour}.sensitivity")
        print(f"sensitivity: {json_path}, {png_path}")


def report_file(options: BuildOptions, weights: str) -> Path:
    return options.out_dir / f"{model_name(weights)}.build.json"


def check_outputs(options: BuildOptions, todo: list[str]) -> None:
    """Before any build: the folders and every report can be written (the reason and the real path, not a
    temporary file's, when not)."""
    check_writable(options.out_dir, folder=True)
    check_writable(options.engine_dir, folder=True)
    if options.triton_dir is not None:
        check_writable(options.triton_dir, folder=True)
    for weights in todo:
        check_writable(report_file(options, weights))


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    if artifact_backend(args.weights):
        raise CheckpointError(f"{args.weights} is already deployed: build starts from a checkpoint")
    options = BuildOptions(
        out_dir=Path(args.out),
        engine_dir=Path(args.engines),
        config=args.config,
        fuse=args.fuse,
        precision=args.precision,
        profile=args.batch,
        tf32=args.tf32,
        triton_dir=None if args.triton is None else Path(args.triton),
        graph_postprocess=args.postprocess == "graph",
        repeats=args.repeats,
        int8=int8_options(args, args.precision == "int8"),
        int8_sensitivity=args.int8_sensitivity,
    )
    todo = default_weights() if args.weights is None else [args.weights]
    check_outputs(options, todo)
    for weights in todo:
        report = build_and_verify(weights, options)
        report_path = atomic_write_text(
            report_file(options, weights), json.dumps(report.to_dict(), indent=2, allow_nan=False)
        )
        print_report(report, report_path)
        print_sensitivity(report.sensitivity, options.out_dir)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    interrupted = "build interrupted; finished artifacts are complete, none is half-written"
    return run_command(lambda: _run(args), interrupted)


if __name__ == "__main__":
    sys.exit(main())
