"""trt_yolact: YOLACT instance segmentation, pruned, fused and deployed with ONNX and TensorRT."""

import sys

__version__ = "0.1.0"


def _interrupt_without_traceback(kind: type, value: BaseException, traceback: object) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print("\nerror: interrupted", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


# `python -m trt_yolact.COMMAND` is starting (runpy names the program "-m" while it imports the package):
# Ctrl-C while the command's libraries load, before the command itself can catch it, is not a crash.
if sys.argv[:1] == ["-m"]:
    sys.excepthook = _interrupt_without_traceback
