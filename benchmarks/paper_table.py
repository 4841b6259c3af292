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

from trt_yolact.files import atomic_write_text
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.sources import runner_for
from trt_yolact.metrics.coco_eval import evaluate
from trt_yolact.metrics.speed import BenchOptions, run_benchmark
from trt_yolact.model.checkpoint import ModelSource
from trt_yolact.tables import format_markdown_table, format_table


def main() -> int:
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
    parser.add_argument("--cache", default="export/cache")
    args = parser.parse_args()
    sources = [ModelSource.load(weights) for weights in args.models.split(",")]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        parser.error(f"models must have distinct names (file stems), got {names}")
    backends = ("torch", "onnxruntime")
    with torch.inference_mode():
        accuracy = {}
        for source in sources:
            for backend in backends:
                with runner_for(source, backend, "fp32", "cpu", args.cache) as runner:
                    result, _ = evaluate(Predictor(runner, source.config), args.ann, args.images, 8, args.max_images)
                accuracy[(source.name, backend)] = result
        options = BenchOptions(backends, ("fp32",), (1, 8), args.iters, device="cpu", cache_dir=args.cache)
        speed, _ = run_benchmark(sources, options)
    rows = []
    dense = {(r.backend, r.batch): r for r in speed if r.model == sources[0].name}
    for source in sources:
        for backend in backends:
            b1 = next(r for r in speed if (r.model, r.backend, r.batch) == (source.name, backend, 1))
            b8 = next(r for r in speed if (r.model, r.backend, r.batch) == (source.name, backend, 8))
            acc = accuracy[(source.name, backend)]
            base1, base8, base_acc = dense[(backend, 1)], dense[(backend, 8)], accuracy[(sources[0].name, backend)]
            rows.append(
                {
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
                    "size_change_pct": 100 * (source.file_bytes / sources[0].file_bytes - 1),
                    "params_change_pct": 100 * (b1.params / base1.params - 1),
                    "macs_change_pct": 100 * (b1.macs / base1.macs - 1),
                    "speed_b1_change_pct": 100 * (b1.fps / base1.fps - 1),
                    "throughput_b8_change_pct": 100 * (b8.fps / base8.fps - 1),
                    "forward_throughput_b8_change_pct": 100 * (b8.forward_fps / base8.forward_fps - 1),
                    "memory_change_pct": 100 * (b8.peak_memory_bytes / base8.peak_memory_bytes - 1),
                    "box_ap_change": 100 * (acc.bbox["AP"] - base_acc.bbox["AP"]),
                    "mask_ap_change": 100 * (acc.segm["AP"] - base_acc.segm["AP"]),
                }
            )
    header = [
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
    body = []
    for r in rows:
        body.append(
            [
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
        )
    print(format_table(body, header))
    atomic_write_text(args.md, format_markdown_table(body, header) + "\n")
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ann": args.ann,
        "rows": rows,
    }
    atomic_write_text(args.json, json.dumps(info, indent=2))
    print(f"-> {args.json}, {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
