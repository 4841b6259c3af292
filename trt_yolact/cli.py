"""``trt-yolact COMMAND ...``: the console entry point. Each command is also ``python -m trt_yolact.COMMAND``;
both come from the one table below."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> what it does; the module is trt_yolact.<command>
COMMANDS = {
    "build": "the whole pipeline: checkpoint -> fuse -> ONNX -> FP16 ONNX -> TensorRT engine, verified",
    "predict": "predict instance masks on images, write COCO results and overlays",
    "eval": "COCO box and mask AP of every model x backend x precision, against torch FP32",
    "bench": "speed, size and memory of every model x backend x precision x batch",
    "demo": "realtime video: threaded capture -> infer -> render -> write/display",
    "train": "train or fine-tune on COCO-format data (sparsity training with --sparsity)",
    "prune": "network slimming: remove channels with small BN scales",
    "fuse": "fold every batch norm into its convolution",
    "export": "ONNX export (raw heads or in-graph post-processing), FP16 ONNX",
    "data.shapes": "generate the synthetic shapes dataset (COCO format)",
}


def usage() -> str:
    listing = "\n".join(f"  {name:12s} {text}" for name, text in COMMANDS.items())
    return (
        f"usage: trt-yolact COMMAND [ARGS...]   (trt-yolact COMMAND --help for its arguments)\n\ncommands:\n{listing}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"trt-yolact: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"trt_yolact.{argv[0]}")
    except KeyboardInterrupt:  # Ctrl-C while the command's libraries load: not a crash
        print("\nerror: interrupted", file=sys.stderr)
        return 130
    return int(module.main(argv[1:], prog=f"trt-yolact {argv[0]}") or 0)


if __name__ == "__main__":
    sys.exit(main())
