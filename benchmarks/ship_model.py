"""Store a trained checkpoint as an embedded demo model: fp16 tensors, config kept, size checked.

    python benchmarks/ship_model.py runs/shapes/dense.pth trt_yolact/weights/yolact_shapes.pth \
        [--input-size 320] [--name yolact_shapes] [--note TEXT] [--max-mb 8]

``--input-size`` sets the deployment input size stored with the model (the network is fully convolutional
and its priors follow the feature-map sizes): the demo models train at 256 px and run at 320 px, the size
chosen on the validation split (docs/MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import sys

import torch

from trt_yolact.model.checkpoint import load_model, save_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--input-size", type=int, default=None, help="deployment input size (default: as trained)")
    parser.add_argument(
        "--name", default=None, help="config name stored with the model (default: the training config's name)"
    )
    parser.add_argument("--note", default=None, help="provenance stored in the file (e.g. the recipe)")
    parser.add_argument("--max-mb", type=float, default=8.0, help="the package's size limit per model")
    args = parser.parse_args()
    extra = {"note": args.note} if args.note else {}
    model = load_model(args.source)
    if args.input_size is not None:
        model.config = model.config.replace(max_size=args.input_size)
    if args.name is not None:
        model.config = model.config.replace(name=args.name)
    # fp16 storage halves the file; the loader casts back to fp32.
    path = save_checkpoint(args.target, model, half=True, **extra)
    size_mb = path.stat().st_size / 2**20
    print(
        f"{path}: {size_mb:.2f} MiB, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"torch {torch.__version__}"
    )
    if size_mb > args.max_mb:
        print(f"error: {size_mb:.2f} MiB is over the {args.max_mb} MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
