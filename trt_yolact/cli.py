"""``trt-yolact COMMAND ...``: the console entry point; each command is ``python -m trt_yolact.COMMAND``."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "build": "the whole pipeline: checkpoint -> fuse -> ONNX -> FP16 ONNX -> TensorRT engine, verified",
    "predict": "predict instance masks on images, write COCO results and overlays",
    "eval": "COCO box and mask AP on an annotated image set",
    "train": "train or fine-tune on COCO-format data (sparsity training with --sparsity)",
    "prune": "network slimming: remove channels with small BN scales",
    "fuse": "fold every batch norm into its convolution",
    "export": "ONNX export (raw heads or in-graph post-processing), FP16 ONNX",
    "demo": "realtime video: threaded capture -> infer -> render -> write/display",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:10s} {text}" for name, text in COMMANDS.items())
        print(f"usage: trt-yolact COMMAND [ARGS...]\n\ncommands:\n{listing}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"trt_yolact.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
