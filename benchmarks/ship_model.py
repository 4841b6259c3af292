"""Store a trained checkpoint as an embedded demo model: fp16 tensors, config kept, size checked.

    python benchmarks/ship_model.py runs/shapes/dense.pth trt_yolact/weights/yolact_shapes.pth [--max-mb 8]
"""
from __future__ import annotations

import argparse
import sys

import torch

from trt_yolact.checkpoint import load_model, read_checkpoint, save_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--max-mb", type=float, default=8.0, help="the package's size limit per model")
    args = parser.parse_args()
    extra = {k: v for k, v in read_checkpoint(args.source).extra.items() if k == "iteration"}
    model = load_model(args.source)
    # fp16 storage halves the file; the loader casts back to fp32 (AP change measured in the README).
    path = save_checkpoint(args.target, model, half=True, **extra)
    size_mb = path.stat().st_size / 2**20
    print(f"{path}: {size_mb:.2f} MiB, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
          f"torch {torch.__version__}")
    if size_mb > args.max_mb:
        print(f"error: {size_mb:.2f} MiB is over the {args.max_mb} MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
