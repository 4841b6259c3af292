"""Data: synthetic shapes generator, COCO dataset/loader and SSD-style augmentation.

Names are imported lazily so that `python -m trt_yolact.data.shapes` neither pulls in torch nor
triggers runpy's "found in sys.modules" warning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SHAPE_CLASSES": "synthetic",
    "generate_dataset": "synthetic",
    "render_sample": "synthetic",
    "Batch": "coco",
    "CocoDetection": "coco",
    "Sample": "coco",
    "collate_samples": "coco",
    "make_loader": "coco",
    "TrainTransform": "augment",
    "TransformResult": "augment",
    "ValTransform": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
