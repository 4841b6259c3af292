"""Images from disk: reading them, finding them in folders, the packaged samples and benchmark frames."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from .preprocess import to_bgr_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image OpenCV can (8/16-bit, gray, alpha) as BGR uint8 HWC; one clear error otherwise.

    A truncated JPEG or a PNG that fails its checksum is refused (:class:`ImageError`) rather than decoded
    in part: the decoder would fill the missing rows and detections on them would be made up.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise ImageError(f"{path}: an empty file")
    problem = damage(data)
    if problem is not None:
        raise ImageError(f"{path}: {problem}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{path}: not a readable image")
    try:
        return to_bgr_uint8(image)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def damage(data: bytes) -> str | None:
    """What is wrong with a JPEG or PNG file's bytes (truncated, failed checksum), or None; other formats
    are left to the decoder."""
    if data[:3] == b"\xff\xd8\xff":
        return None if _jpeg_is_complete(data) else "truncated JPEG (it ends before its end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_damage(data)
    return None


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether the main image's scan data reaches an end-of-image marker. The header segments are walked
    by their lengths (an EXIF thumbnail inside them has markers of its own); inside scan data 0xFF is
    always stuffed, so the first FF D9 after the first scan header is the image's end."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos) != -1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _png_damage(data: bytes) -> str | None:
    """A PNG's chunks, each with its CRC, up to IEND."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_type, end = data[pos + 4 : pos + 8], pos + 12 + length
        if end > len(data):
            break
        if zlib.crc32(data[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return f"corrupt PNG (its {chunk_type.decode('latin-1')} chunk fails its checksum)"
        if chunk_type == b"IEND":
            return None
        pos = end
    return "truncated PNG (it ends before its IEND chunk)"


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
