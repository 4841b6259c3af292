"""SSD-style augmentation for YOLACT training, in numpy/cv2.

Every step works on an `Annotated` sample: image HWC BGR float32, masks [N, H, W] uint8,
boxes [N, 4] x1y1x2y2 in PIXELS, labels [N] and a per-instance crowd flag. Crowd instances are
kept at the end of the arrays (every step filters in order), so `num_crowds` stays meaningful.
Randomness only comes from an injected `numpy.random.Generator`, so a seed reproduces a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..config import INPUT_NORMALIZATIONS as NORMALIZE_MODES
from ..config import MEAN_BGR, STD_BGR

_MEAN = np.array(MEAN_BGR, dtype=np.float32)
_STD = np.array(STD_BGR, dtype=np.float32)
# SSD crop modes: None keeps the whole image; otherwise the minimum IoU one box must have with the crop.
CROP_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.7, 0.9, -np.inf)
_CV2_MAX_RESIZE_CHANNELS = 128  # cv2.resize rejects arrays with many channels; resize masks in chunks


@dataclass
class Annotated:
    """Working sample passed between augmentation steps."""

    image: np.ndarray  # float32 [H, W, 3] BGR, 0..255
    masks: np.ndarray  # uint8 [N, H, W] in {0, 1}
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2 in pixels
    labels: np.ndarray  # int64 [N]
    crowd: np.ndarray  # bool [N]; crowd instances come last

    def select(self, keep: np.ndarray) -> Annotated:
        return replace(
            self, masks=self.masks[keep], boxes=self.boxes[keep], labels=self.labels[keep], crowd=self.crowd[keep]
        )


@dataclass
class TransformResult:
    """Network-ready sample."""

    image: np.ndarray  # float32 [3, S, S], RGB, normalised
    masks: np.ndarray  # uint8 [N, S, S]
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2 in [0, 1]
    labels: np.ndarray  # int64 [N]
    num_crowds: int


def to_annotated(
    image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: np.ndarray, num_crowds: int = 0
) -> Annotated:
    """Validate raw inputs and convert them to an `Annotated` (image becomes float32)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be HWC with 3 (BGR) channels, got shape {image.shape}; "
            "load images with cv2.imread(path, cv2.IMREAD_COLOR)"
        )
    height, width = image.shape[:2]
    masks = np.asarray(masks)
    boxes = np.asarray(boxes, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if boxes.size == 0:  # accept [], (0,), (0, 4) for images without instances
        boxes = boxes.reshape(0, 4)
    if masks.size == 0 and labels.size == 0:
        masks = np.zeros((0, height, width), dtype=np.uint8)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"masks must be [N, {height}, {width}] to match the image, got {masks.shape}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array [N], got shape {labels.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x1, y1, x2, y2 in pixels), got {boxes.shape}")
    n = masks.shape[0]
    if not (boxes.shape[0] == n == labels.shape[0]):
        raise ValueError(
            f"masks, boxes and labels must have the same length, got {n}, {boxes.shape[0]}, {labels.shape[0]}"
        )
    if not 0 <= num_crowds <= n:
        raise ValueError(f"num_crowds must be in [0, {n}], got {num_crowds}")
    crowd = np.zeros(n, dtype=bool)
    crowd[n - num_crowds :] = True
    return Annotated(image.astype(np.float32), (masks > 0).astype(np.uint8), boxes.copy(), labels.copy(), crowd)


# ----------------------------------------------------------------------------- photometric


def _brightness(image: np.ndarray, rng: np.random.Generator, delta: float = 32.0) -> np.ndarray:
    if rng.random() < 0.5:
        image = image + rng.uniform(-delta, delta)
    return np.clip(image, 0.0, 255.0)


def _contrast(image: np.ndarray, rng: np.random.Generator, low: float = 0.5, high: float = 1.5) -> np.ndarray:
    if rng.random() < 0.5:
        image = image * rng.uniform(low, high)
    return np.clip(image, 0.0, 255.0)


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD photometric distortion: brightness, then contrast either first or last around the HSV
    saturation/hue jitter; each p=0.5. Input/output float32 BGR in [0, 255]."""
    image = _brightness(image.astype(np.float32), rng)
    contrast_first = rng.random() < 0.5
    if contrast_first:
        image = _contrast(image, rng)
    # float32 HSV in cv2: H in [0, 360), S in [0, 1], V in the input range.
    hsv = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_BGR2HSV)
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0.0, 1.0)
    if rng.random() < 0.5:
        hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-18.0, 18.0), 360.0)
    image = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), 0.0, 255.0)
    if not contrast_first:
        image = _contrast(image, rng)
    return image.astype(np.float32)


# ----------------------------------------------------------------------------- geometric


def expand(sample: Annotated, rng: np.random.Generator, max_ratio: float = 4.0) -> Annotated:
    """Place the image at a random spot of a canvas up to `max_ratio` times larger filled with the
    mean pixel (zoom out: teaches small objects)."""
    height, width = sample.image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    new_h, new_w = int(height * ratio), int(width * ratio)
    left, top = int(rng.uniform(0, new_w - width)), int(rng.uniform(0, new_h - height))
    image = np.empty((new_h, new_w, 3), dtype=np.float32)
    image[:] = _MEAN
    image[top : top + height, left : left + width] = sample.image
    masks = np.zeros((sample.masks.shape[0], new_h, new_w), dtype=np.uint8)
    masks[:, top : top + height, left : left + width] = sample.masks
    boxes = sample.boxes + np.array([left, top, left, top], dtype=np.float32)
    return replace(sample, image=image, masks=masks, boxes=boxes)


def _iou_with(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    ix1, iy1 = np.maximum(boxes[:, 0], rect[0]), np.maximum(boxes[:, 1], rect[1])
    ix2, iy2 = np.minimum(boxes[:, 2], rect[2]), np.minimum(boxes[:, 3], rect[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_r = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / np.maximum(area_b + area_r - inter, 1e-9)


def random_sample_crop(
    sample: Annotated, rng: np.random.Generator, max_modes: int = 20, trials_per_mode: int = 50
) -> Annotated:
    """SSD random crop: pick a min-IoU mode, then try crops (30-100% of each side, aspect ratio
    within [0.5, 2]) until one overlaps some non-crowd box by at least that IoU and contains the
    centre of at least one non-crowd box. Boxes whose centre falls outside are dropped."""
    objects = ~sample.crowd
    if not objects.any():
        return sample  # nothing a crop could be required to keep
    height, width = sample.image.shape[:2]
    for _ in range(max_modes):  # bounded, unlike SSD, so degenerate inputs cannot hang a worker
        min_iou = CROP_MIN_IOUS[int(rng.integers(0, len(CROP_MIN_IOUS)))]
        if min_iou is None:
            return sample
        for _ in range(trials_per_mode):
            w, h = rng.uniform(0.3 * width, width), rng.uniform(0.3 * height, height)
            if not 0.5 <= h / w <= 2.0:
                continue
            left, top = int(rng.uniform(0, width - w)), int(rng.uniform(0, height - h))
            rect = np.array([left, top, left + int(w), top + int(h)], dtype=np.float32)
            if rect[2] <= rect[0] or rect[3] <= rect[1]:
                continue
            if _iou_with(sample.boxes[objects], rect).max() < min_iou:
                continue
            centres = (sample.boxes[:, :2] + sample.boxes[:, 2:]) / 2.0
            keep = (
                (centres[:, 0] > rect[0])
                & (centres[:, 0] < rect[2])
                & (centres[:, 1] > rect[1])
                & (centres[:, 1] < rect[3])
            )
            if not (keep & objects).any():
                continue
            x1, y1, x2, y2 = (int(v) for v in rect)
            kept = sample.select(keep)
            boxes = kept.boxes.copy()
            boxes[:, :2] = np.maximum(boxes[:, :2], rect[:2]) - rect[:2]
            boxes[:, 2:] = np.minimum(boxes[:, 2:], rect[2:]) - rect[:2]
            return replace(
                kept, image=sample.image[y1:y2, x1:x2].copy(), masks=kept.masks[:, y1:y2, x1:x2].copy(), boxes=boxes
            )
    return sample


def random_mirror(sample: Annotated, rng: np.random.Generator) -> Annotated:
    if rng.random() >= 0.5:
        return sample
    width = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, 0], boxes[:, 2] = width - sample.boxes[:, 2], width - sample.boxes[:, 0]
    return replace(sample, image=sample.image[:, ::-1].copy(), masks=sample.masks[:, :, ::-1].copy(), boxes=boxes)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize + 0.5 threshold (smoother than nearest for thin parts)."""
    out = np.zeros((masks.shape[0], size, size), dtype=np.uint8)
    for start in range(0, masks.shape[0], _CV2_MAX_RESIZE_CHANNELS):
        chunk = np.ascontiguousarray(masks[start : start + _CV2_MAX_RESIZE_CHANNELS].transpose(1, 2, 0)) * 255
        resized = cv2.resize(chunk, (size, size), interpolation=cv2.INTER_LINEAR)
        if resized.ndim == 2:  # cv2 drops a single channel axis
            resized = resized[:, :, None]
        out[start : start + chunk.shape[2]] = (resized > 127).transpose(2, 0, 1)
    return out


def resize(sample: Annotated, size: int) -> Annotated:
    """Stretch to `size` x `size` (YOLACT does not preserve the aspect ratio)."""
    height, width = sample.image.shape[:2]
    image = cv2.resize(sample.image, (size, size), interpolation=cv2.INTER_LINEAR)
    scale = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
    return replace(sample, image=image, masks=resize_masks(sample.masks, size), boxes=sample.boxes * scale)


def drop_small(sample: Annotated, min_size: float) -> Annotated:
    """Drop boxes narrower/shorter than `min_size` px and instances whose mask vanished: neither
    gives a usable training target."""
    wh = sample.boxes[:, 2:] - sample.boxes[:, :2]
    keep = (wh[:, 0] >= min_size) & (wh[:, 1] >= min_size) & sample.masks.any(axis=(1, 2))
    return sample.select(keep)


def normalize_image(image: np.ndarray, mode: str = "mean_std") -> np.ndarray:
    """BGR HWC float -> normalised RGB CHW float32."""
    if mode == "mean_std":
        image = (image - _MEAN) / _STD
    elif mode == "scale":
        image = image / 255.0
    else:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
    return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)


def _finish(sample: Annotated, size: int, normalize: str) -> TransformResult:
    return TransformResult(
        image=normalize_image(sample.image, normalize),
        masks=np.ascontiguousarray(sample.masks, dtype=np.uint8),
        boxes=(sample.boxes / np.float32(size)).astype(np.float32).reshape(-1, 4),
        labels=sample.labels.astype(np.int64),
        num_crowds=int(sample.crowd.sum()),
    )


def _check_config(max_size: int, normalize: str) -> None:
    if int(max_size) != max_size or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")


class ValTransform:
    """Resize to max_size x max_size and normalise; keeps every instance (evaluation needs all GT)."""

    def __init__(self, max_size: int = 550, normalize: str = "mean_std") -> None:
        _check_config(max_size, normalize)
        self.max_size = int(max_size)
        self.normalize = normalize

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: np.ndarray, num_crowds: int = 0
    ) -> TransformResult:
        sample = resize(to_annotated(image, masks, boxes, labels, num_crowds), self.max_size)
        return _finish(sample, self.max_size, self.normalize)


class TrainTransform:
    """YOLACT/SSD training pipeline: photometric distortion, expand, random sample crop, mirror,
    resize, drop tiny boxes, normalise. Seeded through its own `numpy.random.Generator`."""

    def __init__(
        self,
        max_size: int = 550,
        seed: int | None = None,
        normalize: str = "mean_std",
        min_box_size: float = 4.0,
        max_attempts: int = 10,
        expand_max_ratio: float = 4.0,
        crop: bool = True,
    ) -> None:
        _check_config(max_size, normalize)
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_size = int(max_size)
        self.normalize = normalize
        self.min_box_size = float(min_box_size)
        # Zoom-out limit: 4 as the original for COCO; smaller when objects are already small in pixels.
        self.expand_max_ratio = float(expand_max_ratio)
        self.crop = crop
        self.max_attempts = int(max_attempts)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream; DataLoader workers call this so they do not share augmentations."""
        self.rng = np.random.default_rng(seed)

    def augment(self, sample: Annotated) -> Annotated:
        """One random pass of the geometric + photometric steps, before resizing."""
        rng = self.rng
        sample = replace(sample, image=photometric_distort(sample.image, rng))
        if rng.random() < 0.5 and self.expand_max_ratio > 1:
            sample = expand(sample, rng, self.expand_max_ratio)
        if self.crop:
            sample = random_sample_crop(sample, rng)
        sample = random_mirror(sample, rng)
        return drop_small(resize(sample, self.max_size), self.min_box_size)

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: np.ndarray, num_crowds: int = 0
    ) -> TransformResult:
        sample = to_annotated(image, masks, boxes, labels, num_crowds)
        has_objects = bool((~sample.crowd).any())
        for _ in range(self.max_attempts):
            out = self.augment(sample)
            # Expand + crop can shrink every object below min_box_size; try again rather than
            # hand the loss an image without positives.
            if not has_objects or (~out.crowd).any():
                return _finish(out, self.max_size, self.normalize)
        return _finish(drop_small(resize(sample, self.max_size), self.min_box_size), self.max_size, self.normalize)
