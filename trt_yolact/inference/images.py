"""Images from disk: reading them, finding them in folders, the packaged samples and benchmark frames."""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from .preprocess import to_bgr_uint8

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


def sample_images() -> list[np.ndarray]:
    """The packaged sample images plus mirrored and rescaled variants: different sizes in one batch."""
    folder = resources.files("trt_yolact") / "samples"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".png"))
    base = [image for image in (cv2.imread(str(folder / name)) for name in names) if image is not None]
    variants = [cv2.flip(image, 1) for image in base] + [cv2.resize(image, None, fx=1.5, fy=1.25) for image in base]
    return base + variants


def synthetic_frames(batch: int, size: tuple[int, int] = (480, 640), seed: int = 0) -> list[np.ndarray]:
    """Deterministic stand-in video frames of ``size`` (h, w): the sample images resized, or noise when no
    sample is packaged."""
    samples = sample_images()
    rng = np.random.default_rng(seed)
    if not samples:
        return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(batch)]
    return [cv2.resize(samples[i % len(samples)], (size[1], size[0])) for i in range(batch)]
