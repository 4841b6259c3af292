"""The whole deployment pipeline in one command.

    python -m trt_yolact.build [--weights CKPT|yolact_shapes] [--fuse/--no-fuse] [--precision fp16|fp32]
                               [--batch 1,4,8] [--postprocess host|graph] [--out export/] [--engines engines/]

checkpoint -> fuse -> ONNX (simplified) -> FP16 ONNX -> TensorRT engine (where TensorRT and a GPU exist;
otherwise one line says why it is skipped) -> every artifact verified against the PyTorch reference on
sample images (raw-output error, detection agreement) -> a build report (table + JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .command_line import add_config_argument, parsed_by, positive_int
from .config import PRECISIONS
from .deploy.tensorrt_build import BuildProfile
from .errors import CheckpointError, run_command
from .files import atomic_write_text
from .metrics.verify import BuildOptions, BuildReport, build_and_verify
from .model.checkpoint import EMBEDDED_MODELS, embedded_model_path
from .runtime.open import artifact_backend


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.build", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", default=None, help="checkpoint file or embedded model name (default: every embedded demo model)"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--fuse", action=argparse.BooleanOptionalAction, default=True, help="fold BN into convs (default: on)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="of the engine (default: fp16)")
    parser.add_argument(
        "--batch",
        type=parsed_by(BuildProfile.parse),
        default=BuildProfile(),
        help="TensorRT profile min,opt,max batch (default 1,4,8)",
    )
    parser.add_argument(
        "--postprocess",
        choices=("host", "graph"),
        default="host",
        help="graph: also export the ONNX with in-graph NMS and mask assembly",
    )
    parser.add_argument("--out", default="export", help="ONNX and report folder (default: export/)")
    parser.add_argument("--engines", default="engines", help="TensorRT engine folder (default: engines/)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per artifact")
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
    print(f"report: {report_path}")


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
        graph_postprocess=args.postprocess == "graph",
        repeats=args.repeats,
    )
    for weights in [args.weights] if args.weights else default_weights():
        report = build_and_verify(weights, options)
        report_path = atomic_write_text(
            options.out_dir / f"{report.model}.build.json", json.dumps(report.to_dict(), indent=2)
        )
        print_report(report, report_path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupted = "build interrupted; finished artifacts are complete, none is half-written"
    return run_command(lambda: _run(args), interrupted)


if __name__ == "__main__":
    sys.exit(main())
