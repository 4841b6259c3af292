"""Fold every batch norm into its convolution and write the fused checkpoint.

python -m trt_yolact.fuse --weights CKPT [--config NAME] --out FUSED.pth [--half] [--check-size N]

The file is written last, once the check passed: a failed check or Ctrl-C leaves no output.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .command_line import add_weights_argument, int_in_range, run_command
from .config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .errors import FuseError, memory_needed_for
from .files import atomic_write_bytes, check_writable
from .model.checkpoint import ModelSource, build_model, fused_checkpoint_payload, serialize
from .model.fuse import FP16_MAX, compare_outputs, conv_bn_pairs, fp16_overflows, fuse_model
from .model.yolact import Yolact


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.fuse", description=__doc__.splitlines()[0])
    add_weights_argument(parser, required=True, checkpoint_only=True)
    parser.add_argument("--out", required=True, help="fused checkpoint to write")
    parser.add_argument("--half", action="store_true", help="store tensors as fp16 (half the file; loads as fp32)")
    parser.add_argument(
        "--check-size",
        type=int_in_range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, off=0),
        default=None,
        help="compare raw outputs before/after on a random image of this size (default: the config's; 0 = skip)",
    )
    return parser


def _written_model(payload: dict[str, Any], source: ModelSource, out: Path) -> Yolact:
    """The model the payload loads as (fp16 tensors load as fp32): what the check must judge."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["model"].items()}
    return build_model(state, source.config, str(out), source.advice)


def _check(model: Yolact, payload: dict[str, Any], source: ModelSource, out: Path, size: int) -> float:
    """The largest raw-output difference between the model and the file to write; a NaN or inf in the
    file's outputs is a :class:`FuseError`."""
    advice = "use a smaller --check-size (0 skips the check)"
    with memory_needed_for(f"the check at --check-size {size}", advice):
        difference, broken = compare_outputs(model, _written_model(payload, source, out), size)
        if not broken and math.isfinite(difference):
            return difference
        original = compare_outputs(model, model, size)[1]
    if original:
        raise FuseError(f"{source.path} itself produces NaN or inf in {', '.join(original)}: its weights are damaged")
    raise FuseError(f"the fused model would produce NaN or inf in {', '.join(broken)}; nothing was written")


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    source = ModelSource.load(args.weights, args.config)
    if source.fused:
        raise FuseError(f"{source.path} is already fused")
    if source.path.resolve() == Path(args.out).resolve():
        raise FuseError("--out is the input checkpoint; write the fused model to another file")
    out = check_writable(args.out)  # before the work
    model = source.model()
    fused = fuse_model(model)
    overflowing = fp16_overflows(fused.state_dict()) if args.half else []
    if overflowing:
        raise FuseError(
            f"--half: values beyond the fp16 range (+-{FP16_MAX:g}) in {', '.join(overflowing[:3])} would be "
            "stored as inf; write the fused model without --half"
        )
    payload = fused_checkpoint_payload(fused, source.extra, half=args.half)
    size = source.config.max_size if args.check_size is None else args.check_size
    # Compared as it will load: with --half the fp16 rounding is part of the difference.
    difference = _check(model, payload, source, out, size) if size else None
    written = atomic_write_bytes(out, serialize(payload))  # last: a failed check or Ctrl-C leaves no file
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
