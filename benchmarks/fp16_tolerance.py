"""How far the FP16 ONNX's raw outputs are from the FP32 ONNX's, against the tolerances ``build`` writes into
its polygraphy command (``POLYGRAPHY_TOLERANCES["fp16"]``).

    python benchmarks/fp16_tolerance.py [--weights yolact_shapes yolact_shapes_pruned] [--work export/fp16_tol] \\
        [--json benchmarks/results/fp16_tolerance.json] [--md benchmarks/results/fp16_tolerance.md]

For each model: the FP32 and FP16 exports of the artifact chain run in ONNX Runtime (CPU) on the sample images;
per output, the largest absolute error, the largest reference value, and whether polygraphy's elementwise check
``|fp16 - fp32| <= atol + rtol * |fp32|`` passes at the build's FP16 tolerances (and at half of them, to show
the margin). ONNX Runtime's FP16 is a stand-in for TensorRT's here, where no TensorRT runs.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from trt_yolact.deploy.artifacts import ArtifactChain
from trt_yolact.deploy.onnx_format import NETWORK_OUTPUT_NAMES
from trt_yolact.deploy.tensorrt_build import POLYGRAPHY_TOLERANCES
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.images import sample_images
from trt_yolact.inference.preprocess import preprocess
from trt_yolact.model.checkpoint import ModelSource
from trt_yolact.runtime.open import open_artifact
from trt_yolact.tables import format_markdown_table, format_table

HEADER = ["model", "output", "max |err|", "max |ref|", "passes atol,rtol", "passes half"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["yolact_shapes", "yolact_shapes_pruned"])
    parser.add_argument("--work", default="export/fp16_tol", help="folder for the exports")
    parser.add_argument("--json", default="benchmarks/results/fp16_tolerance.json")
    parser.add_argument("--md", default="benchmarks/results/fp16_tolerance.md")
    return parser


def passes(reference: torch.Tensor, other: torch.Tensor, atol: float, rtol: float) -> bool:
    return bool(((reference - other).abs() <= atol + rtol * reference.abs()).all())


def measure(weights: str, work: Path) -> list[dict]:
    """One row per network output of ``weights``: the FP16 export's error against the FP32 export's."""
    source = ModelSource.load(weights)
    chain = ArtifactChain.cached(source, work)
    images, _ = preprocess(sample_images(), source.config)
    with open_artifact(chain.onnx("fp32").path) as fp32, open_artifact(chain.onnx("fp16").path) as fp16:
        reference, half = fp32.run(images), fp16.run(images)
    atol, rtol = POLYGRAPHY_TOLERANCES["fp16"]
    rows = []
    for name in NETWORK_OUTPUT_NAMES:
        ref, got = reference[name], half[name]
        rows.append(
            {
                "model": weights,
                "output": name,
                "max_abs_error": float((ref - got).abs().max()),
                "max_abs_reference": float(ref.abs().max()),
                "passes": passes(ref, got, atol, rtol),
                "passes_half": passes(ref, got, atol / 2, rtol / 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = [row for weights in args.weights for row in measure(weights, Path(args.work))]
    table = [
        [r["model"], r["output"], f"{r['max_abs_error']:.4f}", f"{r['max_abs_reference']:.2f}"]
        + ["yes" if r["passes"] else "no", "yes" if r["passes_half"] else "no"]
        for r in rows
    ]
    print(format_table(table, HEADER))
    atol, rtol = POLYGRAPHY_TOLERANCES["fp16"]
    result = {"tolerances": {"atol": atol, "rtol": rtol}, "images": len(sample_images()), "rows": rows}
    result["machine"] = platform.processor() or platform.machine()
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.md, format_markdown_table(table, HEADER) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
