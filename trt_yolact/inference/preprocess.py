"""Images -> network input, with the original YOLACT's arithmetic (its ``FastBaseTransform``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import YolactConfig
from ..errors import ImageError


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Normalise an OpenCV-style array to BGR uint8 HWC.

    Grayscale (HxW or HxWx1) becomes 3 channels, BGRA loses its alpha, 16-bit is scaled to 8-bit.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy image array, got {type(image).__name__}")
    if image.size == 0 or image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"empty or malformed image of shape {image.shape}")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {image.dtype}: use uint8, uint16 or float")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    elif channels != 3:
        raise ImageError(f"unsupported number of channels {channels}: use 1, 3 or 4")
    return np.ascontiguousarray(image)


def normalize_resized(resized: torch.Tensor, config: YolactConfig) -> torch.Tensor:
    """Float BGR ``[B,3,S,S]`` (already resized) -> normalised RGB network input.

    The channels are swapped first, into a new tensor that the steps after it change in place; each element
    still sees the original's subtraction and division, so the result is the same to the bit."""
    rgb = resized[:, [2, 1, 0]]
    if config.normalization == "mean_std":
        mean = torch.tensor(config.mean[::-1], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(config.std[::-1], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return rgb.sub_(mean).div_(std)
    return rgb.div_(255)


def _resized(arrays: Sequence[np.ndarray], size: int, device: str | torch.device) -> torch.Tensor:
    """Same-sized BGR uint8 images -> float ``[N,3,size,size]``, resized on ``device``."""
    stacked = torch.from_numpy(np.stack(arrays)).to(device)
    stacked = stacked.permute(0, 3, 1, 2).contiguous().float()
    return F.interpolate(stacked, (size, size), mode="bilinear", align_corners=False)


def preprocess(
    images: Sequence[np.ndarray] | np.ndarray,
    config: YolactConfig,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """BGR uint8 HWC images of any sizes -> (``[B,3,S,S]`` float32 input, list of original ``(h, w)``).

    Each image is resized on ``device`` with bilinear interpolation (no antialias, ``align_corners=False``)
    to ``max_size x max_size``; images of one size are resized together.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if len(images) == 0:
        raise ImageError("no images to preprocess")
    arrays = [to_bgr_uint8(image) for image in images]
    sizes = [(int(a.shape[0]), int(a.shape[1])) for a in arrays]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, hw in enumerate(sizes):
        groups.setdefault(hw, []).append(index)
    if len(groups) == 1:  # one size (a video, a camera): the resized stack is the batch, in order
        return normalize_resized(_resized(arrays, config.max_size, device), config), sizes
    batch = torch.empty((len(arrays), 3, config.max_size, config.max_size), dtype=torch.float32, device=device)
    for indices in groups.values():
        batch[indices] = _resized([arrays[i] for i in indices], config.max_size, device)
    return normalize_resized(batch, config), sizes
