"""INT8 against FP32 on this CPU: mask AP of both INT8 flavours and ONNX Runtime speed, network alone and end to end.

    python benchmarks/int8_bench.py --ann data/shapes_test/annotations/instances_val.json \\
        --images data/shapes_test/val [--iters 10] [--base] [--work export/int8_bench] \\
        [--json benchmarks/results/int8.json] [--md benchmarks/results/int8.md]

For both demo models: the FP32 export, the ONNX Runtime INT8 flavour and the TensorRT INT8 flavour (run here by
ONNX Runtime, slowly) made by the artifact chain with the default calibration (generated shapes images), then
their box and mask AP on the given set, and the throughput of the FP32 and ONNX Runtime INT8 exports at batch 8,
all four interleaved in one run (``trt_yolact.bench``). ``--base`` adds a released-layout ``yolact_base`` with
random weights, calibrated on the given images: it quantizes, runs and is timed the same way (its AP means
nothing). The targets (INT8 within 0.5 mask AP; dense INT8/FP32 >= 1.7x network and >= 1.5x end to end; pruned
INT8 against dense FP32 >= 2.5x end to end) are checked and printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from gpu_check import random_model

from trt_yolact.config import Int8Options, get_config
from trt_yolact.deploy.artifacts import ArtifactChain
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.calibration_images import int8_setup
from trt_yolact.inference.predictor import Predictor
from trt_yolact.metrics.coco_eval import evaluate
from trt_yolact.metrics.speed import BenchOptions, BenchRow, run_benchmark
from trt_yolact.model.checkpoint import ModelSource, save_checkpoint
from trt_yolact.runtime.open import open_artifact
from trt_yolact.tables import format_markdown_table, format_table

DENSE, PRUNED = "yolact_shapes", "yolact_shapes_pruned"
FORMS = ("fp32", "int8", "int8-trt")  # the FP32 export and the two INT8 flavours
HEADER = ["model", "form", "size MiB", "box AP", "mask AP", "mask AP change", "fwd FPS b8", "FPS b8"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--base", action="store_true", help="also a released-layout yolact_base, random weights")
    parser.add_argument("--work", default="export/int8_bench", help="folder for the exports and caches")
    parser.add_argument("--json", default="benchmarks/results/int8.json")
    parser.add_argument("--md", default="benchmarks/results/int8.md")
    return parser


def exports(source: ModelSource, work: Path, options: Int8Options) -> dict[str, Path]:
    """The FP32 export and both INT8 flavours of ``source``, from the artifact chain."""
    chain = ArtifactChain.cached(source, work, int8=int8_setup(options, source))
    return {
        "fp32": chain.onnx("fp32").path,
        "int8": chain.int8_onnx("onnxruntime").path,
        "int8-trt": chain.int8_onnx("tensorrt").path,
    }


def accuracy(path: Path, args: argparse.Namespace) -> dict[str, float]:
    with open_artifact(path) as runner:
        result, _ = evaluate(Predictor(runner, runner.config), args.ann, args.images, 8, args.max_images)
    return {"box_ap": 100 * result.bbox["AP"], "mask_ap": 100 * result.segm["AP"]}


def speed(paths: dict[str, Path], iters: int) -> dict[str, BenchRow]:
    """Batch-8 rows of the FP32 and ONNX Runtime INT8 exports, every one interleaved with the others."""
    models = {
        f"{name}/{form}": path for name, forms in paths.items() for form, path in forms.items() if form != "int8-trt"
    }
    rows, skipped = run_benchmark(list(map(str, models.values())), BenchOptions(batches=(8,), iters=iters))
    if skipped:
        raise SystemExit(f"could not run: {skipped}")
    by_path = {str(path): key for key, path in models.items()}
    stems = {Path(p).stem: key for p, key in by_path.items()}
    return {stems[row.model]: row for row in rows}


def base_model(work: Path) -> ModelSource:
    """A released-layout yolact_base checkpoint with random weights."""
    path = work / "yolact_base_random.pth"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, random_model(get_config("yolact_base")))
    return ModelSource.load(path, "yolact_base")


def cpu_info() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {"model": platform.processor()}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f or f in ("fma", "f16c")]
    return {"model": fields.get("Model name", "?").strip(), "flags": " ".join(wanted)}


def table_rows(results: dict, rows: dict[str, BenchRow]) -> list[list[str]]:
    lines = []
    for name, forms in results.items():
        reference = forms["fp32"].get("mask_ap")
        for form, measured in forms.items():
            row = rows.get(f"{name}/{form}")
            change = measured.get("mask_ap", float("nan")) - reference if reference is not None else float("nan")
            lines.append(
                [
                    name,
                    form,
                    f"{measured['bytes'] / 2**20:.2f}",
                    f"{measured['box_ap']:.2f}" if "box_ap" in measured else "-",
                    f"{measured['mask_ap']:.2f}" if "mask_ap" in measured else "-",
                    f"{change:+.2f}" if form != "fp32" and "mask_ap" in measured else "-",
                    "-" if row is None else f"{row.forward_fps:.1f}",
                    "-" if row is None else f"{row.fps:.2f}",
                ]
            )
    return lines


def ratios(rows: dict[str, BenchRow], base: bool) -> dict[str, float]:
    out = {
        "dense_int8_vs_fp32_network": rows[f"{DENSE}/int8"].forward_fps / rows[f"{DENSE}/fp32"].forward_fps,
        "dense_int8_vs_fp32_end_to_end": rows[f"{DENSE}/int8"].fps / rows[f"{DENSE}/fp32"].fps,
        "pruned_int8_vs_dense_fp32_end_to_end": rows[f"{PRUNED}/int8"].fps / rows[f"{DENSE}/fp32"].fps,
        "pruned_int8_vs_fp32_network": rows[f"{PRUNED}/int8"].forward_fps / rows[f"{PRUNED}/fp32"].forward_fps,
    }
    if base:
        out["base_int8_vs_fp32_network"] = rows["yolact_base/int8"].forward_fps / rows["yolact_base/fp32"].forward_fps
        out["base_int8_vs_fp32_end_to_end"] = rows["yolact_base/int8"].fps / rows["yolact_base/fp32"].fps
    return out


TARGETS = {
    "dense_int8_vs_fp32_network": 1.7,
    "dense_int8_vs_fp32_end_to_end": 1.5,
    "pruned_int8_vs_dense_fp32_end_to_end": 2.5,
}


def main() -> int:
    args = build_parser().parse_args()
    work = Path(args.work)
    torch.set_num_threads(torch.get_num_threads())
    start = time.perf_counter()
    paths = {name: exports(ModelSource.load(name), work, Int8Options()) for name in (DENSE, PRUNED)}
    if args.base:
        paths["yolact_base"] = exports(base_model(work), work, Int8Options(calib=args.images, calib_images=32))
    results: dict[str, dict[str, dict]] = {}
    for name, forms in paths.items():
        results[name] = {}
        for form, path in forms.items():
            measured: dict = {"bytes": path.stat().st_size, "file": str(path)}
            if name != "yolact_base":
                measured.update(accuracy(path, args))
            results[name][form] = measured
            print(f"{name} {form}: {measured}", flush=True)
    rows = speed(paths, args.iters)
    found = ratios(rows, args.base)
    body = table_rows(results, rows)
    print(format_table(body, HEADER, first_column_left=True))
    for key, value in found.items():
        target = TARGETS.get(key)
        verdict = "" if target is None else (f"  (target >= {target}: {'met' if value >= target else 'MISSED'})")
        print(f"{key}: {value:.2f}x{verdict}")
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ann": args.ann,
        "seconds": round(time.perf_counter() - start),
        "results": results,
        "speed": {key: {"fps": r.fps, "forward_fps": r.forward_fps, "p50_ms": r.p50_ms} for key, r in rows.items()},
        "ratios": found,
    }
    atomic_write_text(args.json, json.dumps(info, indent=2))
    atomic_write_text(args.md, format_markdown_table(body, HEADER) + "\n")
    print(f"-> {args.json}, {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
