"""Channel pruning by batch-norm scale factors (network slimming), as in Ning et al. 2023, or of the whole network.

    python -m trt_yolact.prune --weights CKPT (--ratio R | --threshold T) --out PRUNED.pth [--fuse] [--report R.json]
    python -m trt_yolact.prune --weights CKPT --scope all --ratio R [--ratio-backbone RB] [--ratio-neck RN] --out P.pth

``--scope internal`` (the paper) prunes the bottleneck-internal channels; ``--scope all`` also the stem, the
stages' residual streams, the FPN, the protonet, the prototypes and the head. BN scales and BN-free weight
magnitudes are not on one scale, so each kind has its own global ratio: ``--ratio`` sets both,
``--ratio-backbone`` and ``--ratio-neck`` each one. What is pruned and how removed channels are compensated:
:mod:`trt_yolact.model.prune` and :mod:`trt_yolact.model.channel_groups`.
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
from .model.channel_groups import SCOPES
from .model.prune import IMPORTANCES, PruneOptions, prune_checkpoint
from .training.importance import annotated_batches, taylor_importance


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.prune", description=__doc__.splitlines()[0])
    add_weights_argument(parser, required=True, checkpoint_only=True)
    parser.add_argument(
        "--scope",
        choices=SCOPES,
        default="internal",
        help="internal: block-internal channels (the paper, default); all: every channel group",
    )
    parser.add_argument(
        "--ratio", type=open_fraction, help="prune this share of prunable channels (global percentile per kind)"
    )
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--ratio-backbone", type=open_fraction, help="the BN-ranked groups' ratio (default --ratio)")
    rule.add_argument("--threshold", type=non_negative_float, help="prune BN-ranked channels with |gamma| <= this")
    parser.add_argument(
        "--ratio-neck", type=open_fraction, help="with --scope all: the BN-free groups' ratio (default --ratio)"
    )
    parser.add_argument(
        "--importance",
        choices=IMPORTANCES,
        default="taylor",
        help="how --scope all ranks the BN-free groups' channels: first-order taylor scores on --taylor-data "
        "(default: it kept the most AP on the demo model), or weight magnitude l2 / l1",
    )
    parser.add_argument("--taylor-data", metavar="ANN.json:IMAGES", help="annotated images for --importance taylor")
    parser.add_argument(
        "--taylor-images", type=positive_int, default=64, help="images scored with --importance taylor (default 64)"
    )
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


def prune_options(args: argparse.Namespace) -> PruneOptions:
    """The options the arguments ask for; a missing or contradictory rule is a UsageError."""
    if args.threshold is not None and args.ratio is not None:
        raise UsageError("give --ratio or --threshold, not both (with --threshold, --ratio-neck sets the rest)")
    backbone = args.ratio_backbone if args.ratio_backbone is not None else args.ratio
    if backbone is None and args.threshold is None:
        raise UsageError("say how much to prune: --ratio R (or --ratio-backbone / --threshold for the BN groups)")
    if args.ratio_neck is not None and args.scope != "all":
        raise UsageError("--ratio-neck ranks the BN-free groups, which only --scope all prunes")
    neck = args.ratio_neck if args.ratio_neck is not None else args.ratio
    return PruneOptions(
        ratio=backbone,
        threshold=args.threshold,
        min_keep=args.min_keep,
        round_to=args.round_to,
        input_size=args.input_size,
        scope=args.scope,
        ratio_neck=neck if args.scope == "all" else None,
        importance=args.importance,
    )


def _taylor_scores(args: argparse.Namespace):
    """The Taylor importance over ``--taylor-data`` for ``--importance taylor``, else None."""
    if args.importance != "taylor":
        if args.taylor_data:
            raise UsageError("--taylor-data is read by --importance taylor only")
        return None
    if not args.taylor_data:
        return None  # pruning says what is missing, once it knows the scope needs it

    def scores(model, groups):
        with torch.enable_grad():
            return taylor_importance(model, groups, annotated_batches(args.taylor_data, model, args.taylor_images))

    return scores


@torch.no_grad()
def _run(args: argparse.Namespace) -> int:
    options = prune_options(args)
    if not args.dry_run and not args.out:
        raise UsageError("--out is required (or pass --dry-run to only report)")
    out = None if args.dry_run else args.out
    for path in (out, args.report):  # both outputs checked before the work, so neither appears without the other
        if path:
            check_writable(path)
    with memory_needed_for("pruning", "pass a smaller --input-size"):
        report = prune_checkpoint(args.weights, options, args.config, out, args.fuse, _taylor_scores(args))
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
