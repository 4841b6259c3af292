"""Train YOLACT on a COCO-format dataset (also the fine-tuning step after pruning).

    python -m trt_yolact.train --config yolact_shapes --data-train ANN:IMAGES --data-val ANN:IMAGES \\
        [--weights INIT] [--iters N] [--batch-size B] [--lr LR] [--out DIR] [--resume] [--stop-at ITER]

Runs unchanged under ``torchrun``. Every random choice derives from ``--seed`` and the iteration, so
``--resume`` continues exactly where the last checkpoint left off (:mod:`trt_yolact.training.trainer`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from .command_line import (
    add_config_argument,
    add_weights_argument,
    device_name,
    float_at_least,
    fraction_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from .errors import TrainingError
from .model.channel_groups import SCOPES
from .runtime.base import DEVICE_CHOICES
from .training.trainer import FINAL_MODEL, TRAIN_STATE, TrainConfig, Trainer, TrainingRun, make_trainer


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = TrainConfig()
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.train", description=__doc__.splitlines()[0])
    add_config_argument(parser, required=True, help="preset name or .yaml/.json file: the architecture")
    add_weights_argument(parser, checkpoint_only=True, default_text="a model initialised afresh", with_config=False)
    parser.add_argument("--data-train", required=True, metavar="ANN:IMAGES")
    parser.add_argument("--data-val", default=None, metavar="ANN:IMAGES")
    parser.add_argument("--iters", type=positive_int, default=d.iters)
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="per process")
    parser.add_argument("--lr", type=positive_float, default=d.lr)
    parser.add_argument("--warmup-iters", type=non_negative_int, default=d.warmup_iters)
    parser.add_argument(
        "--lr-steps",
        type=fraction_list,
        default=d.lr_steps,
        help=f"fractions of --iters where the lr steps down (default: {d.lr_steps})",
    )
    parser.add_argument("--seed", type=non_negative_int, default=d.seed)
    parser.add_argument("--workers", type=non_negative_int, default=d.workers)
    parser.add_argument("--val-every", type=non_negative_int, default=d.val_every)
    parser.add_argument("--val-images", type=positive_int, default=d.val_images)
    parser.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every)
    parser.add_argument(
        "--expand-max", type=float_at_least(1), default=d.expand_max_ratio, help="augmentation zoom-out limit (1: off)"
    )
    parser.add_argument("--min-box-size", type=non_negative_float, default=d.min_box_size, help="drop smaller (px)")
    parser.add_argument("--clip-grad", type=non_negative_float, default=0.0, help="max gradient norm (0: no clipping)")
    parser.add_argument(
        "--sparsity", type=non_negative_float, default=0.0, metavar="LAMBDA", help="L1 penalty on BN scales"
    )
    parser.add_argument(
        "--sparsity-scope",
        choices=SCOPES,
        default=d.sparsity_scope,
        help="internal: bottleneck-internal BN scales (the paper); all: every BN scale that ranks a channel group "
        "and group lasso on the BN-free groups (FPN, protonet, prototypes, head), for prune --scope all",
    )
    parser.add_argument(
        "--sparsity-neck",
        type=non_negative_float,
        default=None,
        metavar="LAMBDA",
        help="with --sparsity-scope all: the group-lasso strength on the BN-free groups (default: --sparsity)",
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help=f"{DEVICE_CHOICES} (default: cuda when available)"
    )
    parser.add_argument("--out", default="runs/train", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    parser.add_argument(
        "--stop-at",
        type=positive_int,
        default=None,
        metavar="ITER",
        help="end this run after iteration ITER with a checkpoint (continue later with --resume)",
    )
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    if args.sparsity_neck is not None and args.sparsity_scope != "all":
        raise TrainingError("--sparsity-neck is the group-lasso strength of --sparsity-scope all; add that")
    if args.stop_at is not None and args.stop_at > args.iters:
        raise TrainingError(f"--stop-at must be from 1 to --iters ({args.iters}), got {args.stop_at}")
    return TrainConfig(
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_iters=args.warmup_iters,
        lr_steps=args.lr_steps,
        seed=args.seed,
        workers=args.workers,
        val_every=args.val_every,
        val_images=args.val_images,
        checkpoint_every=args.checkpoint_every,
        sparsity=args.sparsity,
        sparsity_scope=args.sparsity_scope,
        sparsity_neck=args.sparsity_neck,
        clip_grad=args.clip_grad,
        expand_max_ratio=args.expand_max,
        min_box_size=args.min_box_size,
    )


def _prepare(args: argparse.Namespace) -> Trainer:
    run = TrainingRun(
        args.config, args.data_train, args.data_val, Path(args.out), args.weights, args.device, args.resume
    )
    trainer, reset = make_trainer(run, train_config(args))
    if reset:
        print(
            f"re-initialised class-dependent layers for {len(trainer.config.class_names)} classes: {', '.join(reset)}"
        )
    return trainer


def _train(trainer: Trainer, stop_at: int | None) -> int:
    out_dir, iters = trainer.out_dir, trainer.tc.iters
    try:
        trainer.run(stop_at)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {trainer.resume_hint()}")
        return 130
    if trainer.is_main:
        if trainer.state.iteration < iters:
            print(f"stopped at iteration {trainer.state.iteration}: {out_dir / TRAIN_STATE} (continue with --resume)")
        else:
            print(f"done: {out_dir / FINAL_MODEL}")
    if dist.is_initialized():
        # Rank 0 still writes the final model and plots; ranks tearing gloo down alone can abort.
        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _train(_prepare(args), args.stop_at))


if __name__ == "__main__":
    sys.exit(main())
