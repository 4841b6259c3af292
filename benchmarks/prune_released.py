"""Pruning on the released model sizes: prune, load, predict, export, and the eager fusion speed-up.

    python benchmarks/prune_released.py [--configs yolact_base,yolact_darknet53] [--ratio 0.6] [--repeats 5]
        [--scope internal|all] [--ratio-neck R] [--json benchmarks/results/prune_released.json]
        [--md benchmarks/results/prune_released.md]

Each config gets random weights in the released layout (BN scales spread uniformly so that the global
percentile has something to choose; no pretrained weights exist here). For each: `prune --ratio` file,
params and conv MACs before/after; the pruned checkpoint is written, loaded back through the
architecture-from-shapes loader, run through `Predictor` on a 640x480 image, exported to ONNX and checked in
ONNX Runtime against torch; then the eager-mode CPU forward time at batch 1 (through the torch runner, in its
NHWC CPU layout) of dense, dense+fused, pruned and pruned+fused, interleaved, median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gpu_check import random_model

from trt_yolact.config import get_config
from trt_yolact.deploy.onnx_export import export_onnx
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.images import synthetic_frames as synthetic_images
from trt_yolact.inference.predictor import Predictor
from trt_yolact.model.checkpoint import load_model, save_checkpoint
from trt_yolact.model.fuse import fuse_model
from trt_yolact.model.prune import prune_model
from trt_yolact.runtime.torch_runner import TorchRunner
from trt_yolact.tables import format_markdown_table, format_table


def onnx_max_error(model, path: Path, size: int) -> float:
    import onnxruntime as ort

    export_onnx(model, path)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.inference_mode():
        reference = model(images)
    return max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outputs, reference))


def forward_ms(models: dict[str, torch.nn.Module], size: int, repeats: int) -> dict[str, float]:
    """Median batch-1 forward time per model through the torch runner (its CPU layout, NHWC), the models
    interleaved so machine noise hits them alike."""
    images = torch.randn(1, 3, size, size)
    runners = {name: TorchRunner(model, "cpu") for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for runner in runners.values():
            runner(images)  # warm-up
        for _ in range(repeats):
            for name, runner in runners.items():
                start = time.perf_counter()
                runner(images)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def run_config(name: str, ratio: float, repeats: int, work: Path, scope: str, ratio_neck: float | None) -> dict:
    config = get_config(name)
    dense = random_model(config)
    neck = ratio_neck if scope == "all" else None
    pruned, report = prune_model(dense, ratio=ratio, scope=scope, ratio_neck=neck)
    path = save_checkpoint(work / f"{name}_pruned.pth", pruned)
    assert path.stat().st_size == report.bytes_after
    loaded = load_model(path)
    onnx_error = onnx_max_error(fuse_model(loaded), work / f"{name}_pruned.onnx", config.max_size)
    detections = Predictor(TorchRunner(loaded, torch.device("cpu")), loaded.config)(synthetic_images(1))
    speed = forward_ms(
        {"dense": dense, "dense+fused": fuse_model(dense), "pruned": pruned, "pruned+fused": fuse_model(pruned)},
        config.max_size,
        repeats,
    )
    return {
        "config": name,
        "scope": scope,
        "ratio": ratio,
        "ratio_neck": report.ratio_neck,
        "input_size": config.max_size,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "file_pct_of_original": 100 * report.bytes_after / report.bytes_before,
        "macs_pct_of_original": 100 * report.macs_after / report.macs_before,
        "prunable_channels_before": sum(layer.total for layer in report.layers),
        "prunable_channels_after": sum(layer.kept for layer in report.layers),
        "loaded_and_predicted": True,
        "detections": len(detections[0]),
        "onnx_max_abs_error": onnx_error,
        "forward_ms_b1": speed,
        "fusion_speedup_dense": speed["dense"] / speed["dense+fused"],
        "fusion_speedup_pruned": speed["pruned"] / speed["pruned+fused"],
        "pruned_fused_speedup_vs_dense": speed["dense"] / speed["pruned+fused"],
    }


def _scope_label(record: dict) -> str:
    neck = record["ratio_neck"]
    return f"{record['scope']} {record['ratio']:g}" + (f" / neck {neck:g}" if neck is not None else "")


def _table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [
        "config",
        "scope",
        "params M",
        "GMACs",
        "file MiB",
        "file %",
        "MACs %",
        "ONNX err",
        "fwd ms dense",
        "+fused",
        "pruned",
        "pruned+fused",
        "fusion x",
        "pruned+fused x",
    ]
    body = []
    for r in records:
        ms = r["forward_ms_b1"]
        body.append(
            [
                r["config"],
                _scope_label(r),
                f"{r['params_before'] / 1e6:.1f} -> {r['params_after'] / 1e6:.1f}",
                f"{r['macs_before'] / 1e9:.1f} -> {r['macs_after'] / 1e9:.1f}",
                f"{r['bytes_before'] / 2**20:.1f} -> {r['bytes_after'] / 2**20:.1f}",
                f"{r['file_pct_of_original']:.1f}",
                f"{r['macs_pct_of_original']:.1f}",
                f"{r['onnx_max_abs_error']:.1e}",
                f"{ms['dense']:.0f}",
                f"{ms['dense+fused']:.0f}",
                f"{ms['pruned']:.0f}",
                f"{ms['pruned+fused']:.0f}",
                f"{r['fusion_speedup_dense']:.2f}",
                f"{r['pruned_fused_speedup_vs_dense']:.2f}",
            ]
        )
    return header, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="yolact_base,yolact_darknet53")
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--scope", choices=("internal", "all"), default="internal")
    parser.add_argument("--ratio-neck", type=float, default=None, help="with --scope all (default: --ratio)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/results/prune_released.json")
    parser.add_argument("--md", default="benchmarks/results/prune_released.md")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            print(f"{name}: prune --scope {args.scope}, load, predict, export, time ...", file=sys.stderr, flush=True)
            records.append(run_config(name, args.ratio, args.repeats, Path(tmp), args.scope, args.ratio_neck))
    header, body = _table(records)
    print(format_table(body, header))
    atomic_write_text(args.md, format_markdown_table(body, header) + "\n")
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "weights": "random, released layout",
        "rows": records,
    }
    atomic_write_text(args.json, json.dumps(info, indent=2))
    print(f"-> {args.json}, {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
