"""What every command shares: the model arguments and argument types.

A command's ``main`` parses its arguments, calls library code inside :func:`trt_yolact.errors.run_command`,
and prints.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .config import BACKENDS, PRECISIONS
from .errors import TrtYolactError
from .inference.sources import DEFAULT_CACHE

WEIGHTS_HELP = (
    "checkpoint file, embedded model name (yolact_shapes, yolact_shapes_pruned), .onnx export or .engine "
    "(default: yolact_shapes)"
)
CHECKPOINT_ONLY = " (this command needs a checkpoint)"


# ---- argument types: a bad value is reported by argparse, naming the flag
def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1] (thresholds on scores)."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``."""
    return tuple(positive_int(part) for part in _parts(text))


def choice_list(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of some of ``choices``."""

    def parse(text: str) -> tuple[str, ...]:
        parts = _parts(text)
        unknown = [p for p in parts if p not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}: use {', '.join(choices)}")
        return parts

    return parse


def parsed_by(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argument type from a library parser: its error message is the one argparse shows for the flag."""

    def argument(text: str) -> Any:
        try:
            return parse(text)
        except TrtYolactError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    argument.__name__ = parse.__name__
    return argument


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts:
        raise argparse.ArgumentTypeError("empty list")
    return parts


# ---- the arguments every command that takes a model spells the same way
def add_weights_argument(
    parser: argparse.ArgumentParser, required: bool = False, several: bool = False, checkpoint_only: bool = False
) -> None:
    """``--weights``: a checkpoint, an embedded model name, an ``.onnx`` or an ``.engine``; ``several``:
    comma-separated, the first is the baseline; ``checkpoint_only``: the command needs a checkpoint. Also
    ``--config``, which names the model config where the file does not."""
    text = WEIGHTS_HELP.replace(" (default: yolact_shapes)", "") + CHECKPOINT_ONLY if checkpoint_only else WEIGHTS_HELP
    if several:
        text = f"comma-separated, the first is the baseline; each a {text}"
    parser.add_argument("--weights", required=required, default=None, help=text)
    add_config_argument(parser)


def add_config_argument(parser: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    parser.add_argument(
        "--config",
        required=required,
        default=None,
        help=help or "preset name or .yaml/.json file (default: the model's own)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """Where the model runs: backend(s), precision(s), device, and the cache for the artifacts they need."""
    if several:
        parser.add_argument(
            "--backends",
            type=choice_list(BACKENDS),
            default=("torch",),
            help=f"comma-separated: {','.join(BACKENDS)} (default: torch)",
        )
        parser.add_argument(
            "--precision",
            type=choice_list(PRECISIONS),
            default=("fp32",),
            help=f"comma-separated: {','.join(PRECISIONS)} (default: fp32)",
        )
    else:
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            default=None,
            help="default: torch for a checkpoint, implied by an .onnx/.engine file",
        )
        parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="for a checkpoint (default: fp32)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when torch sees a GPU)")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="folder for the ONNX/engines a backend needs")


def add_postprocess_arguments(
    parser: argparse.ArgumentParser, score_threshold: float = 0.0, batch_size: int = 4
) -> None:
    parser.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help=f"images per batch (default: {batch_size})"
    )
    parser.add_argument(
        "--score-threshold",
        type=fraction,
        default=score_threshold,
        help=f"drop detections scoring below this (default: {score_threshold})",
    )
    parser.add_argument("--top-k", type=positive_int, default=100, help="at most this many detections per image")
