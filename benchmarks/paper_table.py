"""The paper's comparison (Ning et al. 2023, Table: pruned + fused YOLACT vs dense) on our demo models.

    python benchmarks/paper_table.py --models yolact_shapes,yolact_shapes_pruned[,pruned_fused.pth] \\
        --ann data/shapes_test/annotations/instances_val.json --images data/shapes_test/val \\
        [--iters 20] [--json benchmarks/results/paper_table.json] [--md benchmarks/results/paper_table.md]

The first model is the dense reference. For each model and backend (torch, ONNX Runtime), all on this CPU:
file size, params, MACs, per-image latency (batch 1) and throughput (batch 8) end to end, peak memory, box and
mask AP on the given set — each as a change against the dense model on the same backend (the targets compare
like with like). Throughput is given end to end and for the network alone (forward only). Timings are
interleaved within one run (``trt_yolact.bench``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from trt_yolact.config import DEFAULT_CACHE, RuntimeOptions
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.sources import runner_for
from trt_yolact.metrics.coco_eval import EvalResult, evaluate
from trt_yolact.metrics.speed import BenchOptions, BenchRow, run_benchmark
from trt_yolact.model.checkpoint import ModelSource
from trt_yolact.tables import format_markdown_table, format_table

BACKENDS = ("torch", "onnxruntime")
HEADER = [
    "model",
    "backend",
    "file",
    "params",
    "GMACs",
    "ms/img b1",
    "FPS b1",
    "FPS b8",
    "fwd FPS b8",
    "peak MiB",
    "box AP",
    "mask AP",
]
Accuracy = dict[tuple[str, str], EvalResult]  # (model name, backend) -> its AP on the given set


def build_parser() -> argparse.ArgumentParser:
    """The command line: which models to compare, the evaluation set, and where the table goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="yolact_shapes,yolact_shapes_pruned",
        help="comma-separated checkpoints or embedded names; the first is the dense reference",
    )
    parser.add_argument("--ann", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--json", default="benchmarks/results/paper_table.json")
    parser.add_argument("--md", default="benchmarks/results/paper_table.md")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    return parser


def measure_accuracy(sources: list[ModelSource], args: argparse.Namespace) -> Accuracy:
    """Box and mask AP of every model on every backend, each through its own runner on the CPU."""
    accuracy = {}
    for source in sources:
        for backend in BACKENDS:
            runtime = RuntimeOptions(backend=backend, precision="fp32", device="cpu", cache_dir=args.cache)
            with runner_for(source, runtime) as runner:
                result, _ = evaluate(Predictor(runner, source.config), args.ann, args.images, 8, args.max_images)
            accuracy[(source.name, backend)] = result
    return accuracy


def measure_speed(sources: list[ModelSource], args: argparse.Namespace) -> list[BenchRow]:
    """Latency, throughput and memory of every model and backend at batch 1 and 8, interleaved in one run."""
    options = BenchOptions(BACKENDS, ("fp32",), (1, 8), args.iters, runtime=RuntimeOptions(cache_dir=args.cache))
    speed, _ = run_benchmark(sources, options)
    return speed


def speed_row(speed: list[BenchRow], model: str, backend: str, batch: int) -> BenchRow:
    """The benchmark row of one model, backend and batch."""
    return next(r for r in speed if (r.model, r.backend, r.batch) == (model, backend, batch))


def comparison_row(
    source: ModelSource, backend: str, dense: ModelSource, speed: list[BenchRow], accuracy: Accuracy
) -> dict:
    """One model on one backend: its measures and each one's change against the dense model on that backend."""
    b1, b8 = speed_row(speed, source.name, backend, 1), speed_row(speed, source.name, backend, 8)
    base1, base8 = speed_row(speed, dense.name, backend, 1), speed_row(speed, dense.name, backend, 8)
    acc, base_acc = accuracy[(source.name, backend)], accuracy[(dense.name, backend)]
    return {
        "model": source.name,
        "backend": backend,
        "file_bytes": source.file_bytes,
        "params": b1.params,
        "macs": b1.macs,
        "latency_ms_b1": b1.p50_ms,
        "fps_b1": b1.fps,
        "fps_b8": b8.fps,
        "forward_fps_b1": b1.forward_fps,
        "forward_fps_b8": b8.forward_fps,
        "peak_memory_bytes_b8": b8.peak_memory_bytes,
        "box_ap": acc.bbox["AP"],
        "mask_ap": acc.segm["AP"],
        "size_change_pct": 100 * (source.file_bytes / dense.file_bytes - 1),
        "params_change_pct": 100 * (b1.params / base1.params - 1),
        "macs_change_pct": 100 * (b1.macs / base1.macs - 1),
        "speed_b1_change_pct": 100 * (b1.fps / base1.fps - 1),
        "throughput_b8_change_pct": 100 * (b8.fps / base8.fps - 1),
        "forward_throughput_b8_change_pct": 100 * (b8.forward_fps / base8.forward_fps - 1),
        "memory_change_pct": 100 * (b8.peak_memory_bytes / base8.peak_memory_bytes - 1),
        "box_ap_change": 100 * (acc.bbox["AP"] - base_acc.bbox["AP"]),
        "mask_ap_change": 100 * (acc.segm["AP"] - base_acc.segm["AP"]),
    }


def table_line(r: dict) -> list[str]:
    """A row of the printed and markdown table: each measure with its change against the dense model."""
    return [
        r["model"],
        r["backend"],
        f"{r['file_bytes'] / 2**20:.2f} MiB ({r['size_change_pct']:+.1f}%)",
        f"{r['params'] / 1e6:.2f} M ({r['params_change_pct']:+.1f}%)",
        f"{r['macs'] / 1e9:.2f} ({r['macs_change_pct']:+.1f}%)",
        f"{r['latency_ms_b1']:.1f}",
        f"{r['fps_b1']:.2f} ({r['speed_b1_change_pct']:+.1f}%)",
        f"{r['fps_b8']:.2f} ({r['throughput_b8_change_pct']:+.1f}%)",
        f"{r['forward_fps_b8']:.1f} ({r['forward_throughput_b8_change_pct']:+.1f}%)",
        f"{r['peak_memory_bytes_b8'] / 2**20:.0f} ({r['memory_change_pct']:+.1f}%)",
        f"{100 * r['box_ap']:.2f} ({r['box_ap_change']:+.2f})",
        f"{100 * r['mask_ap']:.2f} ({r['mask_ap_change']:+.2f})",
    ]


def write_outputs(rows: list[dict], args: argparse.Namespace) -> None:
    """Prints the table and writes it as markdown, and the rows with the run's context as JSON."""
    body = [table_line(r) for r in rows]
    print(format_table(body, HEADER))
    atomic_write_text(args.md, format_markdown_table(body, HEADER) + "\n")
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ann": args.ann,
        "rows": rows,
    }
    atomic_write_text(args.json, json.dumps(info, indent=2))
    print(f"-> {args.json}, {args.md}")


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    sources = [ModelSource.load(weights) for weights in args.models.split(",")]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        parser.error(f"models must have distinct names (file stems), got {names}")
    with torch.inference_mode():
        accuracy = measure_accuracy(sources, args)
        speed = measure_speed(sources, args)
    rows = [comparison_row(source, backend, sources[0], speed, accuracy) for source in sources for backend in BACKENDS]
    write_outputs(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
