"""Generate the synthetic shapes dataset (COCO format).

    python -m trt_yolact.data.shapes --out DIR --train 200 --val 50 --size 256 --seed 0
    python -m trt_yolact.data.shapes --out DIR --train 0 --val 300 --seed 777 --backgrounds unseen

What the images hold and how they are drawn: :mod:`trt_yolact.data.synthetic`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..command_line import int_in_range, non_negative_int, run_command
from ..config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .synthetic import BACKGROUND_SETS, generate_dataset


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m trt_yolact.data.shapes", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=non_negative_int, default=200, help="number of training images")
    parser.add_argument("--val", type=non_negative_int, default=50, help="number of validation images")
    parser.add_argument(
        "--size",
        type=int_in_range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        default=256,
        help=f"max image side in pixels ({MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE})",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (>= 0)")
    parser.add_argument(
        "--backgrounds",
        choices=sorted(BACKGROUND_SETS),
        default="standard",
        help="'unseen': background families training never sees (generalisation check)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    paths = generate_dataset(args.out, args.train, args.val, args.size, args.seed, args.backgrounds)
    print(f"wrote {args.train} train / {args.val} val images to {paths['root']}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
