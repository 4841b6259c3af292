"""Fold every batch norm into its convolution and write the fused checkpoint.

python -m trt_yolact.fuse --weights CKPT [--config NAME] --out FUSED.pth [--half] [--check-size N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .command_line import add_weights_argument, non_negative_int, run_command
from .errors import FuseError, UsageError
from .model.checkpoint import ModelSource, save_fused_checkpoint
from .model.fuse import conv_bn_pairs, fuse_model, max_output_difference


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.fuse", description=__doc__.splitlines()[0])
    add_weights_argument(parser, required=True, checkpoint_only=True)
    parser.add_argument("--out", required=True, help="fused checkpoint to write")
    parser.add_argument("--half", action="store_true", help="store tensors as fp16 (half the file; loads as fp32)")
    parser.add_argument(
        "--check-size",
        type=non_negative_int,
        default=None,
        help="compare raw outputs before/after on a random image of this size (default: the config's; 0 = skip)",
    )
    return parser


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    if args.check_size not in (None, 0) and args.check_size < 32:
        raise UsageError(f"--check-size must be 0 (skip) or at least 32, got {args.check_size}")
    source = ModelSource.load(args.weights, args.config)
    if source.fused:
        raise FuseError(f"{source.path} is already fused")
    if source.path.resolve() == Path(args.out).resolve():
        raise FuseError("--out is the input checkpoint; write the fused model to another file")
    model = source.model()
    written = save_fused_checkpoint(args.out, fuse_model(model), source.extra, half=args.half)
    size = source.config.max_size if args.check_size is None else args.check_size
    # Compared as written and loaded back: with --half the file's fp16 rounding is part of the difference.
    difference = max_output_difference(model, ModelSource.load(written, source.config).model(), size) if size else None
    check = f"; raw outputs differ by at most {difference:.2e} at {size}x{size}" if difference is not None else ""
    print(
        f"folded {len(conv_bn_pairs(model))} batch norms -> {written} ({written.stat().st_size / 2**20:.1f} MiB){check}"
    )
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
