"""Channel pruning by batch-norm scale factors (network slimming), as in Ning et al. 2023.

    python -m trt_yolact.prune --weights CKPT (--ratio R | --threshold T) --out PRUNED.pth [--fuse] [--report R.json]

What is pruned and how the removed channels are compensated: :mod:`trt_yolact.model.prune`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .command_line import (
    add_weights_argument,
    int_in_range,
    non_negative_float,
    open_fraction,
    positive_int,
    run_command,
)
from .config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .errors import UsageError, memory_needed_for
from .files import atomic_write_text, check_writable
from .model.prune import PruneOptions, prune_checkpoint


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.prune", description=__doc__.splitlines()[0])
    add_weights_argument(parser, required=True, checkpoint_only=True)
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument(
        "--ratio", type=open_fraction, help="prune this share of prunable channels (global |gamma| percentile)"
    )
    rule.add_argument("--threshold", type=non_negative_float, help="prune channels with |gamma| <= this")
    parser.add_argument("--min-keep", type=positive_int, default=8, help="channels kept per layer at least (default 8)")
    parser.add_argument(
        "--round-to", type=positive_int, default=8, help="round kept counts up to a multiple (default 8)"
    )
    parser.add_argument(
        "--input-size",
        type=int_in_range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        default=None,
        help="image size for MACs (default: config's)",
    )
    parser.add_argument("--fuse", action="store_true", help="also fold BN into the convs of the written checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="only report; write no checkpoint")
    parser.add_argument("--out", default=None, help="pruned checkpoint to write")
    parser.add_argument("--report", default=None, help="also write the report as JSON here")
    return parser


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    options = PruneOptions(
        ratio=args.ratio,
        threshold=args.threshold,
        min_keep=args.min_keep,
        round_to=args.round_to,
        input_size=args.input_size,
    )
    if not args.dry_run and not args.out:
        raise UsageError("--out is required (or pass --dry-run to only report)")
    out = None if args.dry_run else args.out
    for path in (out, args.report):  # both outputs checked before the work, so neither appears without the other
        if path:
            check_writable(path)
    with memory_needed_for("pruning", "pass a smaller --input-size"):
        report = prune_checkpoint(args.weights, options, args.config, out, args.fuse)
    print(report.table())
    if args.report:
        try:
            atomic_write_text(args.report, json.dumps(report.to_dict(), indent=2, allow_nan=False))
        except BaseException:
            if out:
                Path(out).unlink(missing_ok=True)
            raise
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
