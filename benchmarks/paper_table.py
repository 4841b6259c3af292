"""The paper's comparison (Ning et al. 2023, Table: pruned + fused YOLACT vs dense) on our demo models.

    python benchmarks/paper_table.py --models yolact_shapes,yolact_shapes_pruned[,pruned_fused.pth] \\
        --ann data/shapes_test/annotations/instances_val.json --images data/shapes_test/val \\
        [--iters 20] [--json benchmarks/results/paper_table.json] [--md benchmarks/results/paper_table.md]

The first model is the dense reference. For each model and configuration (torch FP32, ONNX Runtime FP32 and
ONNX Runtime INT8), all on this CPU: file size (for INT8 the INT8 export's), params, MACs, per-image latency
(batch 1) and throughput (batch 8) end to end, peak memory, box and mask AP on the given set — each as a change
against the dense model in FP32 on the same backend (the targets compare like with like). Throughput is given
end to end and for the network alone (forward only). Timings are interleaved within one run
(``trt_yolact.bench``). INT8 is calibrated as ``build --precision int8`` does by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from trt_yolact.config import DEFAULT_CACHE, Int8Options, RuntimeOptions
from trt_yolact.deploy.artifacts import ArtifactChain
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.calibration_images import int8_setup
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.sources import runner_for
from trt_yolact.metrics.coco_eval import EvalResult, evaluate
from trt_yolact.metrics.speed import BenchOptions, BenchRow, run_benchmark
from trt_yolact.model.checkpoint import ModelSource
from trt_yolact.tables import format_markdown_table, format_table

BACKENDS = ("torch", "onnxruntime")
CONFIGURATIONS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
HEADER = [
    "model",
    "backend",
    "precision",
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
Accuracy = dict[tuple[str, str, str], EvalResult]  # (model name, backend, precision) -> its AP on the given set


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
    """Box and mask AP of every model in every configuration, each through its own runner on the CPU."""
    accuracy = {}
    for source in sources:
        for backend, precision in CONFIGURATIONS:
            runtime = RuntimeOptions(backend=backend, precision=precision, device="cpu", cache_dir=args.cache)
            with runner_for(source, runtime) as runner:
                result, _ = evaluate(Predictor(runner, source.config), args.ann, args.images, 8, args.max_images)
            accuracy[(source.name, backend, precision)] = result
    return accuracy


def measure_speed(sources: list[ModelSource], args: argparse.Namespace) -> list[BenchRow]:
    """Latency, throughput and memory of every model and configuration at batch 1 and 8, interleaved in one
    run (torch INT8 does not exist and is left out)."""
    runtime = RuntimeOptions(cache_dir=args.cache)
    options = BenchOptions(BACKENDS, ("fp32", "int8"), (1, 8), args.iters, runtime=runtime)
    speed, _ = run_benchmark(sources, options)
    return speed


def speed_row(speed: list[BenchRow], model: str, backend: str, precision: str, batch: int) -> BenchRow:
    """The benchmark row of one model, backend, precision and batch."""
    return next(r for r in speed if (r.model, r.backend, r.precision, r.batch) == (model, backend, precision, batch))


def deployed_bytes(source: ModelSource, precision: str, cache: str) -> int:
    """The file that is deployed: the checkpoint, or for INT8 the ONNX Runtime INT8 export (from the cache)."""
    if precision != "int8":
        return source.file_bytes
    chain = ArtifactChain.cached(source, cache, int8=int8_setup(Int8Options(), source))
    return chain.int8_onnx("onnxruntime").size_bytes


def comparison_row(
    source: ModelSource,
    configuration: tuple[str, str],
    dense: ModelSource,
    speed: list[BenchRow],
    accuracy: Accuracy,
    cache: str,
) -> dict:
    """One model in one configuration: its measures and each one's change against the dense model in FP32 on
    the same backend."""
    (backend, precision), reference = configuration, (dense.name, configuration[0], "fp32")
    b1, b8 = (speed_row(speed, source.name, backend, precision, batch) for batch in (1, 8))
    base1, base8 = (speed_row(speed, dense.name, backend, "fp32", batch) for batch in (1, 8))
    acc, base_acc = accuracy[(source.name, backend, precision)], accuracy[reference]
    file_bytes = deployed_bytes(source, precision, cache)
    return {
        "model": source.name,
        "backend": backend,
        "precision": precision,
        "file_bytes": file_bytes,
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
        "size_change_pct": 100 * (file_bytes / dense.file_bytes - 1),
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
        r["precision"],
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
    rows = [
        comparison_row(source, configuration, sources[0], speed, accuracy, args.cache)
        for source in sources
        for configuration in CONFIGURATIONS
    ]
    write_outputs(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
