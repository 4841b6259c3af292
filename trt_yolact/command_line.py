"""What every command shares: the model arguments, argument types, and one line for a user's mistake.

A command's ``main`` parses its arguments, calls library code inside :func:`run_command`, and prints. Errors
a user can cause (:class:`~trt_yolact.errors.TrtYolactError`, ``OSError``) become ``error: ...`` on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from .config import (
    BACKENDS,
    DEFAULT_CACHE,
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    INT8_BACKENDS,
    POSTPROCESS_PLACES,
    PRECISIONS,
    Int8Options,
    RuntimeOptions,
)
from .deploy.calibration import CALIBRATION_METHODS, MIN_CALIBRATION_IMAGES
from .errors import TrtYolactError, UsageError
from .files import check_writable
from .runtime.base import DEVICE_CHOICES, parse_device


def run_command(work: Callable[[], int], interrupted: str = "interrupted") -> int:
    """``work()``'s exit code; a user's mistake is one ``error:`` line (exit 2), Ctrl-C exits 130."""
    try:
        return work()
    except TrtYolactError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\nerror: {interrupted}", file=sys.stderr)
        return 130
    return 2


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


def fraction_list(text: str) -> tuple[float, ...]:
    """``"0.7,0.9"`` -> ``(0.7, 0.9)``, each from 0 to 1."""
    return tuple(fraction(part) for part in _parts(text))


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


def int_in_range(low: int, high: int, off: int | None = None) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``, or ``off`` (a value meaning "skip", such as 0)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value != off and not low <= value <= high:
            also = f" (or {off} to skip)" if off is not None else ""
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}{also}, got {text}")
        return value

    return parse


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def float_at_least(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text, float)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low:g} or more, got {text}")
        return value

    return parse


non_negative_float = float_at_least(0)


def open_fraction(text: str) -> float:
    """A float strictly between 0 and 1 (a share of something to remove)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def device_name(text: str) -> str:
    """``--device``: the runtime's rule, so that every command refuses the same values the same way."""
    try:
        parse_device(text)
    except TrtYolactError:
        raise argparse.ArgumentTypeError(f"must be {DEVICE_CHOICES}, got {text!r}") from None
    return text


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
def weights_help(checkpoint_only: bool = False, default: str | None = DEFAULT_MODEL) -> str:
    """What ``--weights`` accepts, the same words for every command."""
    names = ", ".join(EMBEDDED_MODELS)
    kinds = f"a checkpoint file or an embedded model name ({names})"
    if not checkpoint_only:
        kinds = f"a checkpoint file, an embedded model name ({names}), an .onnx export or a TensorRT .engine"
    return kinds + (f" (default: {default})" if default else "")


def add_weights_argument(
    parser: argparse.ArgumentParser,
    required: bool = False,
    several: bool = False,
    checkpoint_only: bool = False,
    default: str | None = None,
    default_text: str | None = DEFAULT_MODEL,
    with_config: bool = True,
    value_type: Callable[[str], Any] | None = None,
) -> None:
    """``--weights`` (``several``: comma-separated, the first is the baseline, parsed to a tuple) and, ``with_config``,
    ``--config``, which names the model config where the file does not. ``checkpoint_only``: the command
    needs a checkpoint. ``value_type``: the argument type of the single form."""
    text = weights_help(checkpoint_only, None if required else default_text)
    if several:
        text = f"comma-separated, the first is the baseline; each {text}"
    kind = weights_list if several else value_type
    parser.add_argument("--weights", required=required, default=default, type=kind, help=text)
    if with_config:
        add_config_argument(parser)


def add_config_argument(parser: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    text = help or "preset name or .yaml/.json file, for a file that does not carry its config"
    parser.add_argument("--config", required=required, default=None, help=text)


def add_runtime_arguments(
    parser: argparse.ArgumentParser, several: bool = False, backends: tuple[str, ...] = ("torch",)
) -> None:
    """Where the model runs: backend(s), precision(s), device, and the cache for the artifacts they need."""
    if several:
        joined = ",".join(backends)
        parser.add_argument(
            "--backends",
            type=choice_list(BACKENDS),
            default=backends,
            help=f"comma-separated, of {','.join(BACKENDS)} (default: {joined})",
        )
        parser.add_argument(
            "--precision",
            type=choice_list(PRECISIONS),
            default=("fp32",),
            help=f"comma-separated, of {','.join(PRECISIONS)} (default: fp32)",
        )
    else:
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            default=None,
            help="default: torch for a checkpoint, implied by an .onnx/.engine file",
        )
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=None,
            help="default: fp32 for a checkpoint, an .onnx/.engine file's own",
        )
    parser.add_argument(
        "--device", type=device_name, default=None, help=f"{DEVICE_CHOICES} (default: cpu; TensorRT runs on cuda)"
    )
    parser.add_argument(
        "--cache", default=DEFAULT_CACHE, help=f"folder for the ONNX/engines a backend needs (default: {DEFAULT_CACHE})"
    )
    add_int8_arguments(parser)


def runtime_options(args: argparse.Namespace, max_batch: int = 8) -> RuntimeOptions:
    """The options of :func:`add_runtime_arguments` (single backend form) and ``--config``."""
    return RuntimeOptions(
        args.backend,
        args.precision,
        args.device,
        args.config,
        args.cache,
        max_batch,
        int8_options(args, None if args.precision is None else args.precision == "int8"),
    )


def at_least_calibration_images(text: str) -> int:
    value = _number(text, int)
    if value < MIN_CALIBRATION_IMAGES:
        raise argparse.ArgumentTypeError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {text}")
    return value


def percentile(text: str) -> float:
    value = _number(text, float)
    if not 50 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be above 50 and at most 100, got {text}")
    return value


def add_int8_arguments(parser: argparse.ArgumentParser, search: bool = False) -> None:
    """How INT8 artifacts are calibrated; ``search``: also ``--int8-max-ap-drop`` and ``--int8-sensitivity``
    (which evaluate quantized variants on a calibration-disjoint image set)."""
    d = Int8Options()
    group = parser.add_argument_group(f"INT8 (--precision int8, on {' and '.join(INT8_BACKENDS)})")
    group.add_argument(
        "--calib",
        default=None,
        metavar="DIR|ANN.json:IMAGES",
        help="calibration images (default: generated shapes images, for models of the shapes dataset only)",
    )
    group.add_argument(
        "--calib-images",
        type=at_least_calibration_images,
        default=d.calib_images,
        metavar="N",
        help=f"at most N calibration images, sampled with a fixed seed (default: {d.calib_images})",
    )
    group.add_argument(
        "--calib-method", choices=CALIBRATION_METHODS, default=d.calib_method, help=f"default: {d.calib_method}"
    )
    group.add_argument(
        "--calib-percentile",
        type=percentile,
        default=d.calib_percentile,
        help=f"of |x|, for --calib-method percentile (default: {d.calib_percentile})",
    )
    group.add_argument(
        "--calib-batch",
        type=positive_int,
        default=d.calib_batch,
        help=f"images per calibration run; lower it where memory is short (default: {d.calib_batch})",
    )
    group.add_argument(
        "--int8-exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep these layers in higher precision: a block (stem, stage1.., fpn, protonet, head) or a module "
        "path glob (proto_net.*); repeatable",
    )
    if search:
        _add_int8_search_arguments(group)


def _add_int8_search_arguments(group: Any) -> None:
    group.add_argument(
        "--int8-max-ap-drop",
        type=non_negative_float,
        default=None,
        metavar="D",
        help="leave the most sensitive blocks unquantized until the mask AP drop on the sensitivity set is "
        "within D points (implies --int8-sensitivity)",
    )
    group.add_argument(
        "--int8-sensitivity",
        action="store_true",
        help="report each block's mask AP change, quantized alone and left out alone (table, JSON, PNG)",
    )
    group.add_argument(
        "--int8-eval",
        default=None,
        metavar="ANN.json:IMAGES",
        help="the sensitivity set, disjoint from the calibration images (default: generated shapes images)",
    )


def int8_options(
    args: argparse.Namespace, asked: bool | None = None, ask_with: str = "--precision int8"
) -> Int8Options:
    """The options of :func:`add_int8_arguments`. ``asked`` False (no INT8 was asked for) with any of them set
    is a user's mistake: they would be ignored without a word; ``ask_with`` says how to ask for INT8."""
    options = Int8Options(
        calib=args.calib,
        calib_images=args.calib_images,
        calib_method=args.calib_method,
        calib_percentile=args.calib_percentile,
        calib_batch=args.calib_batch,
        exclude=tuple(args.int8_exclude),
        max_ap_drop=getattr(args, "int8_max_ap_drop", None),
        sensitivity_set=getattr(args, "int8_eval", None),
    )
    if asked is False and (options != Int8Options() or getattr(args, "int8_sensitivity", False)):
        raise UsageError(f"--calib, --calib-* and --int8-* apply to INT8 only, which was not asked for: add {ask_with}")
    return options


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


def add_postprocess_place_argument(parser: argparse.ArgumentParser) -> None:
    """``--postprocess host,graph``: where a comparison's checkpoints select their detections."""
    parser.add_argument(
        "--postprocess",
        type=choice_list(POSTPROCESS_PLACES),
        default=("host",),
        help="comma-separated, of host (torch post-processing of the raw outputs) and graph (the export with "
        "the post-processing inside; onnxruntime and tensorrt, fp32 and fp16): rows side by side (default: host)",
    )


# ---- more argument types, and outputs that must not overwrite inputs
def non_empty(text: str) -> str:
    """A value that names something: an empty one would silently mean the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: name a file or leave the option out")
    return text


def weights_list(text: str) -> tuple[str, ...]:
    """``"a,b.onnx"`` -> ``("a", "b.onnx")``; an empty item is a mistake, not a model to skip."""
    parts = tuple(p.strip() for p in text.split(","))
    if not any(parts):
        raise argparse.ArgumentTypeError("empty: name at least one model")
    if not all(parts):
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}: separate the models by single commas")
    return parts


def positive_int_list_up_to(limit: int) -> Callable[[str], tuple[int, ...]]:
    """``"1,8"`` -> ``(1, 8)``, each from 1 to ``limit``."""

    def parse(text: str) -> tuple[int, ...]:
        values = positive_int_list(text)
        too_big = [v for v in values if v > limit]
        if too_big:
            raise argparse.ArgumentTypeError(f"must be from 1 to {limit}, got {too_big[0]}")
        return values

    return parse


def check_outputs_apart(
    outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]
) -> None:
    """A :class:`UsageError` when an output would overwrite an input or another output: the same file
    however it is spelled (relative, through a link). ``None`` entries are options not given."""
    taken: dict[object, str] = {}
    for name, path in inputs.items():
        if path:
            taken.update(dict.fromkeys(_identities(path), name))
    for name, path in outputs.items():
        if not path:
            continue
        clash = next((taken[key] for key in _identities(path) if key in taken), None)
        if clash is not None:
            raise UsageError(f"{name} would overwrite {clash}; choose another path")
        taken.update(dict.fromkeys(_identities(path), name))


def check_outputs_first(
    outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]
) -> None:
    """For a command that writes only after long work: before it, no output overwrites an input or another
    output (:func:`check_outputs_apart`) and each can be written (``None``: an output not asked for)."""
    check_outputs_apart(outputs, inputs)
    for path in outputs.values():
        if path:
            check_writable(path)


def _identities(path: str | os.PathLike) -> list[object]:
    """The resolved path and, for an existing file, its device and inode (a hard link is the same file)."""
    keys: list[object] = [os.path.realpath(path)]
    with contextlib.suppress(OSError):
        status = os.stat(path)
        keys.append((status.st_dev, status.st_ino))
    return keys
