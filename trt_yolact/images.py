"""Reading images from disk and finding them in folders."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from .preprocess import ImageError, to_bgr_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image OpenCV can (8/16-bit, gray, alpha) as BGR uint8 HWC; one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{path}: not a readable image")
    try:
        return to_bgr_uint8(image)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def expand_image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); a missing input is kept so that the
    caller reports it in order."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths
