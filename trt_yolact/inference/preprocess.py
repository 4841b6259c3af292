"""Images -> network input, with the original YOLACT's arithmetic (its ``FastBaseTransform``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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


def _normalize_rgb(rgb: torch.Tensor, config: YolactConfig) -> torch.Tensor:
    """Float RGB ``[B,3,S,S]`` (already resized) -> the normalised network input, in place.

    The original normalises in BGR and swaps the channels last; the mean and std are swapped here instead, so
    each element still sees the original's subtraction and division and the result is the same to the bit."""
    if config.normalization == "mean_std":
        mean = torch.tensor(config.mean[::-1], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(config.std[::-1], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return rgb.sub_(mean).div_(std)
    return rgb.div_(255)


def _planar_rgb(pixels: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """uint8 BGR ``[N,H,W,3]`` -> float RGB ``[N,3,H,W]`` in ``out``: one pass per channel converts to float,
    to planar layout and to RGB order at once. The resize after it treats every channel alike, so swapping
    before it gives the values the original gets by swapping after it."""
    for rgb_channel, bgr_channel in enumerate((2, 1, 0)):
        out[:, rgb_channel].copy_(pixels[..., bgr_channel])
    return out


def _resized(arrays: Sequence[np.ndarray], size: int, device: str | torch.device) -> torch.Tensor:
    """Same-sized BGR uint8 images -> float RGB ``[N,3,size,size]``, resized on ``device``: on a GPU in one
    upload and one resize; on the CPU one image at a time, so that its float copy is still in cache when the
    resize reads it."""
    device = torch.device(device)
    count, (height, width) = len(arrays), arrays[0].shape[:2]
    resize = lambda planar: F.interpolate(planar, (size, size), mode="bilinear", align_corners=False)  # noqa: E731
    if device.type != "cpu":
        pixels = torch.from_numpy(np.stack(arrays)).to(device)
        return resize(_planar_rgb(pixels, torch.empty((count, 3, height, width), device=device)))
    planar = torch.empty((1, 3, height, width))
    resized = torch.empty((count, 3, size, size))
    for index, array in enumerate(arrays):
        resized[index] = resize(_planar_rgb(torch.from_numpy(array)[None], planar))[0]
    return resized


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
        return _normalize_rgb(_resized(arrays, config.max_size, device), config), sizes
    batch = torch.empty((len(arrays), 3, config.max_size, config.max_size), dtype=torch.float32, device=device)
    for indices in groups.values():
        batch[indices] = _resized([arrays[i] for i in indices], config.max_size, device)
    return _normalize_rgb(batch, config), sizes


# ---- device pre-processing from uint8 frames: one upload, then resize + normalise + layout on the device


def stack_frames(images: Sequence[np.ndarray], pin: bool = False) -> torch.Tensor:
    """Same-sized images -> one uint8 ``[B,H,W,3]`` BGR host tensor, in page-locked memory when ``pin``
    (only worth it for a CUDA upload: the copy can then run asynchronously)."""
    arrays = [to_bgr_uint8(image) for image in images]
    if len(arrays) == 0:
        raise ImageError("no images to preprocess")
    if len({a.shape for a in arrays}) != 1:
        raise ImageError(f"frames of one upload must share one size, got {sorted({a.shape[:2] for a in arrays})}")
    host = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=pin)
    np.stack(arrays, out=host.numpy())
    return host


def upload_frames(
    images: Sequence[np.ndarray], device: str | torch.device, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Same-sized BGR images -> uint8 ``[B,H,W,3]`` on ``device`` in one copy (from pinned memory, queued
    asynchronously, on CUDA). ``out``: a device buffer of that shape to copy into."""
    device = torch.device(device)
    host = stack_frames(images, pin=device.type == "cuda")
    if out is None:
        return host.to(device, non_blocking=True)
    return out.copy_(host, non_blocking=True)


@dataclass
class FramePreprocessor:
    """uint8 BGR ``[B,H,W,3]`` frames on ``device`` -> the normalised ``[B,3,S,S]`` float32 input there, equal
    to the bit to :func:`preprocess` of the same images.

    Four kernels: the channels are swapped on the uint8 pixels (the resize treats every channel alike, so the
    order commutes with it); one copy converts to float and to NCHW; the resize; the normalisation in place,
    with the original's subtraction and division. Its constants live on the device already and nothing waits
    for the host, so a call can be captured in a CUDA graph.
    """

    config: YolactConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self._channels = torch.tensor([2, 1, 0], device=self.device)
        rgb = lambda values: torch.tensor(values[::-1], dtype=torch.float32, device=self.device)  # noqa: E731
        self._mean = rgb(self.config.mean).view(1, 3, 1, 1)
        self._std = rgb(self.config.std).view(1, 3, 1, 1)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ImageError(f"frames must be uint8 [B,H,W,3], got {frames.dtype} {list(frames.shape)}")
        batch, height, width, _ = frames.shape
        planar = torch.empty((batch, 3, height, width), dtype=torch.float32, device=frames.device)
        planar.copy_(frames.index_select(3, self._channels).permute(0, 3, 1, 2))
        size = self.config.max_size
        resized = F.interpolate(planar, (size, size), mode="bilinear", align_corners=False)
        if self.config.normalization == "mean_std":
            return resized.sub_(self._mean).div_(self._std)
        return resized.div_(255)
