"""Speed, size and memory of every model x backend x precision x batch, with the paper-style comparison.

    python -m trt_yolact.bench --weights yolact_shapes,yolact_shapes_pruned --backends torch,onnxruntime \\
        [--precision fp32,fp16] [--postprocess host,graph] [--batch 1,8] [--pipelines dynamic,static,graph] \\
        [--iters 20] [--json bench.json] \\
        [--plot bench.png] [--md bench.md]

What is measured and how: :mod:`trt_yolact.metrics.speed`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .command_line import (
    add_postprocess_place_argument,
    add_runtime_arguments,
    add_weights_argument,
    check_outputs_first,
    choice_list,
    int8_options,
    non_negative_int,
    positive_int,
    positive_int_list_up_to,
    run_command,
)
from .config import EMBEDDED_MODELS, MAX_BATCH, RuntimeOptions
from .errors import BackendUnavailable, UsageError
from .files import atomic_write_bytes
from .inference.predictor import PIPELINES
from .metrics.speed import BenchOptions, BenchRow, markdown_table, plot_rows, run_benchmark, table_rows
from .model.checkpoint import ModelSource
from .runtime.open import artifact_backend
from .tables import format_table


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = BenchOptions()
    parser = argparse.ArgumentParser(prog=prog or "python -m trt_yolact.bench", description=__doc__.splitlines()[0])
    add_weights_argument(
        parser, several=True, default=",".join(EMBEDDED_MODELS), default_text=",".join(EMBEDDED_MODELS)
    )
    add_runtime_arguments(parser, several=True, backends=d.backends)
    parser.set_defaults(backends=None)  # None: not given, so that a deployed file runs on its own backend
    add_postprocess_place_argument(parser)
    parser.add_argument(
        "--batch",
        type=positive_int_list_up_to(MAX_BATCH),
        default=d.batches,
        help=f"comma-separated batch sizes, each 1 to {MAX_BATCH} (default: {','.join(map(str, d.batches))})",
    )
    parser.add_argument(
        "--pipelines",
        type=choice_list(PIPELINES),
        default=None,
        help="comma-separated, of dynamic (the reference pre-processing and dynamic post-processing), static (one "
        "uint8 upload, device pre-processing, static post-processing) and graph (static, each stage a CUDA graph: "
        "torch on a GPU); default: all three with --device cuda, dynamic otherwise",
    )
    parser.add_argument("--iters", type=positive_int, default=d.iters, help=f"measured rounds (default: {d.iters})")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=d.warmup, help=f"unmeasured iterations first (default: {d.warmup})"
    )
    parser.add_argument(
        "--settle",
        type=non_negative_int,
        default=d.settle,
        help="unmeasured iterations of a configuration before each measured one (0: none)",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--md", default=None, help="markdown table")
    parser.add_argument("--plot", default=None)
    return parser


def default_pipelines(device: str | None) -> tuple[str, ...]:
    """Every pipeline on a GPU, where they differ in speed; the reference alone elsewhere."""
    return PIPELINES if device is not None and device.startswith("cuda") else ("dynamic",)


def write_outputs(rows: list[BenchRow], skipped: list[str], args: argparse.Namespace) -> None:
    """Every output rendered first, then written one right after another (their paths were checked before
    the measurements)."""
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "rows": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in rows],
        "skipped": skipped,
    }
    files: list[tuple[str, bytes]] = []
    if args.json:
        files.append((args.json, json.dumps(report, indent=2, allow_nan=False).encode()))
    if args.md:
        files.append((args.md, (markdown_table(rows) + "\n").encode()))
    if args.plot and rows:
        files.append((args.plot, plot_rows(rows)))
    for path, data in files:
        atomic_write_bytes(path, data)


def check_inputs_and_outputs(args: argparse.Namespace) -> None:
    """Before any model work: every deployed file can run on the backends asked for, and no output
    overwrites an input or another output, or cannot be written."""
    for weights in args.weights:
        implied = artifact_backend(weights)
        if implied is not None and args.backends is not None and implied not in args.backends:
            raise UsageError(
                f"{weights} runs on {implied}, not on {','.join(args.backends)}: add {implied} to --backends "
                "or leave --backends out"
            )
    outputs = {f"--{flag} {path}": path for flag, path in (("json", args.json), ("md", args.md), ("plot", args.plot))}
    check_outputs_first(outputs, {f"--weights {w}": w for w in args.weights if Path(w).is_file()})


def _run(args: argparse.Namespace) -> int:
    check_inputs_and_outputs(args)
    runtime = RuntimeOptions(
        device=args.device, config=args.config, cache_dir=args.cache, int8=int8_options(args, "int8" in args.precision)
    )
    models = [w if artifact_backend(w) else ModelSource.load(w, args.config) for w in args.weights]
    backends = args.backends or BenchOptions().backends
    options = BenchOptions(
        backends, args.precision, args.batch, args.iters, args.warmup, args.settle, runtime, args.postprocess
    )
    options = replace(options, pipelines=args.pipelines or default_pipelines(args.device))
    with torch.inference_mode():
        rows, skipped = run_benchmark(models, options)
    if not rows:
        raise BackendUnavailable("no configuration can run here:\n" + "\n".join(f"  {line}" for line in skipped))
    header, body = table_rows(rows)
    print(format_table(body, header))
    for line in skipped:
        print(f"skipped: {line}")
    write_outputs(rows, skipped, args)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
