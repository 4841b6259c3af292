"""Synthetic "shapes" instance-segmentation dataset in COCO format.

A tiny, fully controlled dataset for smoke-testing training, export and inference end to end:
five shape classes drawn with random sizes, colours and rotations on varied backgrounds, with
occlusion (later shapes cover earlier ones; masks are the visible parts only). The command is
``python -m trt_yolact.data.shapes`` (:mod:`trt_yolact.data.shapes`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..errors import UsageError, memory_needed_for
from ..files import atomic_write_bytes, check_writable, replaced_entries

SHAPE_CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "ring")

# Instances whose visible part is this small carry no useful signal (and look like noise).
MIN_VISIBLE_PIXELS = 30
MIN_VISIBLE_FRACTION = 0.2
# Object extent (diameter) as a fraction of the shorter image side, sampled log-uniformly.
MIN_EXTENT_FRACTION = 0.06
MAX_EXTENT_FRACTION = 0.6
MAX_OBJECTS = 6
_SPLIT_CODES = {"train": 0, "val": 1}
_SUBPIXEL_SHIFT = 4  # cv2 drawing with 1/16 px precision so small shapes keep their geometry
_SUBPIXEL_SCALE = 1 << _SUBPIXEL_SHIFT


@dataclass(frozen=True)
class ShapeSpec:
    """Geometry of one shape; `rasterize` turns it into a full (unoccluded) mask."""

    class_index: int
    center: tuple[float, float]  # x, y in pixels
    radius: float  # half of the object's extent in pixels
    angle: float  # rotation in degrees
    aspect: float = 1.0  # rectangle: height / width
    inner: float = 0.5  # star: inner / outer radius; ring: hole / outer radius
    points: int = 5  # star tips
    vertex_jitter: tuple[float, ...] = ()  # triangle: per-vertex (angle offset deg, radius scale)


@dataclass(frozen=True)
class _Instance:
    class_index: int
    mask: np.ndarray  # bool [H, W], visible part


def _fixed(values: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> cv2 fixed-point int32 polygon."""
    return np.round(values * _SUBPIXEL_SCALE).astype(np.int32).reshape(-1, 1, 2)


def _polygon(spec: ShapeSpec) -> np.ndarray:
    cx, cy = spec.center
    name = SHAPE_CLASSES[spec.class_index]
    if name == "rectangle":
        # The diagonal spans the extent, like a circle's diameter does.
        half_w = spec.radius / math.hypot(1.0, spec.aspect)
        half_h = half_w * spec.aspect
        corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif name == "triangle":
        base = np.array([90.0, 210.0, 330.0])
        jitter = np.asarray(spec.vertex_jitter, dtype=np.float64).reshape(3, 2)
        angles = np.deg2rad(base + jitter[:, 0])
        radii = spec.radius * jitter[:, 1]
        corners = np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)
    elif name == "star":
        n = spec.points
        angles = np.deg2rad(90.0 + np.arange(2 * n) * 180.0 / n)
        radii = np.where(np.arange(2 * n) % 2 == 0, spec.radius, spec.radius * spec.inner)
        corners = np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)
    else:
        raise ValueError(f"shape {name!r} is not a polygon")
    theta = math.radians(spec.angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return corners @ rot.T + np.array([cx, cy])


def rasterize(spec: ShapeSpec, height: int, width: int) -> np.ndarray:
    """Full mask (bool [height, width]) of a shape, ignoring occlusion."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    name = SHAPE_CLASSES[spec.class_index]
    center = (int(round(spec.center[0] * _SUBPIXEL_SCALE)), int(round(spec.center[1] * _SUBPIXEL_SCALE)))
    if name in ("circle", "ring"):
        cv2.circle(canvas, center, int(round(spec.radius * _SUBPIXEL_SCALE)), 1, -1, cv2.LINE_8, _SUBPIXEL_SHIFT)
        if name == "ring":
            hole = int(round(spec.radius * spec.inner * _SUBPIXEL_SCALE))
            cv2.circle(canvas, center, hole, 0, -1, cv2.LINE_8, _SUBPIXEL_SHIFT)
    else:
        cv2.fillPoly(canvas, [_fixed(_polygon(spec))], 1, cv2.LINE_8, _SUBPIXEL_SHIFT)
    return canvas.astype(bool)


def sample_shape(rng: np.random.Generator, class_index: int, height: int, width: int) -> ShapeSpec:
    """Random geometry for one shape of `class_index` inside a `height` x `width` image."""
    side = min(height, width)
    extent = side * math.exp(rng.uniform(math.log(MIN_EXTENT_FRACTION), math.log(MAX_EXTENT_FRACTION)))
    radius = max(extent / 2.0, 3.0)
    center = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
    angle = float(rng.uniform(0.0, 360.0))
    name = SHAPE_CLASSES[class_index]
    if name == "rectangle":
        return ShapeSpec(class_index, center, radius, angle, aspect=float(rng.uniform(0.35, 1.0)))
    if name == "triangle":
        jitter = np.stack([rng.uniform(-20, 20, 3), rng.uniform(0.75, 1.0, 3)], axis=1)
        return ShapeSpec(class_index, center, radius, angle, vertex_jitter=tuple(jitter.ravel().tolist()))
    if name == "star":
        return ShapeSpec(
            class_index, center, radius, angle, inner=float(rng.uniform(0.38, 0.55)), points=int(rng.integers(5, 7))
        )
    if name == "ring":
        # Keep both the hole and the band at least ~2 px wide so the hole survives rasterisation.
        inner = float(np.clip(rng.uniform(0.4, 0.7), 2.0 / radius, 1.0 - 2.0 / radius))
        return ShapeSpec(class_index, center, max(radius, 5.0), angle, inner=inner)
    return ShapeSpec(class_index, center, radius, angle)


# ----------------------------------------------------------------------------- backgrounds


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _blend(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours; t is [H, W] in [0, 1]."""
    return a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(0, 7)
    if kind == 0:  # flat
        img = np.broadcast_to(a, (height, width, 3)).copy()
    elif kind == 1:  # linear gradient
        theta = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        img = _blend((t - t.min()) / max(float(np.ptp(t)), 1e-6), a, b)
    elif kind == 2:  # radial gradient
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        t = np.hypot(xs - cx, ys - cy)
        img = _blend(t / max(float(t.max()), 1e-6), a, b)
    elif kind == 3:  # per-pixel noise around a base colour
        img = a + rng.normal(0, rng.uniform(10, 40), (height, width, 3))
    elif kind == 4:  # stripes
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(4, 24)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        img = _blend((np.sin(2 * math.pi * t / period) > 0).astype(np.float32), a, b)
    elif kind == 5:  # checkerboard
        cell = int(rng.integers(4, 33))
        t = ((xs // cell + ys // cell) % 2).astype(np.float32)
        img = _blend(t, a, b)
    else:  # blurred noise texture
        noise = rng.uniform(0, 1, (height, width)).astype(np.float32)
        sigma = float(rng.uniform(1.5, 8.0))
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
        img = _blend(noise, a, b)
    return np.clip(img, 0, 255).astype(np.float32)


def _unseen_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Background families the standard set never draws, to check generalisation to new scenes.

    The standard set blends two colours; these mix many (plasma, mosaic, colour noise) or draw thin
    line lattices, so a model can only do well here if it learned the shapes rather than the backdrops.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(0, 4)
    if kind == 0:  # plasma: every channel its own sum of random plane waves
        img = np.zeros((height, width, 3), np.float32)
        for c in range(3):
            for _ in range(3):
                theta, period = rng.uniform(0, 2 * math.pi), rng.uniform(20, 120)
                phase = rng.uniform(0, 2 * math.pi)
                img[..., c] += np.sin(2 * math.pi * (xs * math.cos(theta) + ys * math.sin(theta)) / period + phase)
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-6) * 255.0
    elif kind == 1:  # mosaic: Voronoi cells, each a random colour
        n_cells = int(rng.integers(6, 30))
        seeds = np.stack([rng.uniform(0, width, n_cells), rng.uniform(0, height, n_cells)], axis=1)
        colours = rng.uniform(0, 255, (n_cells, 3))
        dist = (xs[..., None] - seeds[:, 0]) ** 2 + (ys[..., None] - seeds[:, 1]) ** 2
        img = colours[dist.argmin(axis=-1)]
    elif kind == 2:  # crosshatch: two sets of thin parallel lines on a flat colour
        img = np.broadcast_to(_random_colour(rng), (height, width, 3)).copy()
        line_colour = _random_colour(rng).tolist()
        spacing = float(rng.uniform(6, 20))
        for theta in (rng.uniform(0, math.pi), rng.uniform(0, math.pi)):
            t = xs * math.cos(theta) + ys * math.sin(theta)
            img[np.mod(t, spacing) < 1.0] = line_colour
    else:  # colour noise: independent blurred noise per channel
        noise = rng.uniform(0, 1, (height, width, 3)).astype(np.float32)
        img = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(2.0, 10.0)))
        img = (img - img.min(axis=(0, 1))) / np.maximum(np.ptp(img, axis=(0, 1)), 1e-6) * 255.0
    return np.clip(img, 0, 255).astype(np.float32)


BACKGROUND_SETS = {"standard": _background, "unseen": _unseen_background}


def _check_backgrounds(backgrounds: str) -> None:
    if backgrounds not in BACKGROUND_SETS:
        raise UsageError(f"backgrounds (--backgrounds) must be one of {sorted(BACKGROUND_SETS)}, got {backgrounds!r}")


def _add_clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Thin lines and small blobs that are deliberately NOT annotated (hard negatives)."""
    height, width = img.shape[:2]
    side = min(height, width)
    for _ in range(int(rng.integers(0, 7))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(img, p1, p2, _random_colour(rng).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 6))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        # Smaller than the smallest object and elongated, so they do not look like circles.
        major = max(1, int(side * rng.uniform(0.008, 0.02)))
        axes = (major, max(1, int(major * rng.uniform(0.3, 0.7))))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, _random_colour(rng).tolist(), -1)


def _object_paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Colour for an object that contrasts with what it covers, optionally shaded."""
    under = img[mask].mean(axis=0) if mask.any() else np.zeros(3)
    colour = _random_colour(rng)
    for _ in range(10):
        if np.abs(colour - under).sum() >= 90:
            break
        colour = _random_colour(rng)
    height, width = img.shape[:2]
    if rng.random() < 0.3:  # simple directional shading keeps objects from being perfectly flat
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        theta = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        shade = 0.75 + 0.5 * t
        return colour[None, None, :] * shade[..., None]
    return np.broadcast_to(colour, img.shape)


def _render_once(
    rng: np.random.Generator, height: int, width: int, backgrounds: str
) -> tuple[np.ndarray, list[_Instance]]:
    img = BACKGROUND_SETS[backgrounds](rng, height, width)
    if rng.random() < 0.7:
        _add_clutter(rng, img)
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_index = int(rng.integers(0, len(SHAPE_CLASSES)))
        mask = rasterize(sample_shape(rng, class_index, height, width), height, width)
        if not mask.any():
            continue
        paint = _object_paint(rng, img, mask)
        img[mask] = paint[mask]
        # The new object occludes everything drawn before it.
        for v in visible:
            v &= ~mask
        full_masks.append(mask)
        visible.append(mask.copy())
        classes.append(class_index)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 0.8)))
    img = img + rng.normal(0, rng.uniform(0, 6), img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    instances = [
        _Instance(c, v)
        for c, v, f in zip(classes, visible, full_masks)
        if v.sum() >= MIN_VISIBLE_PIXELS and v.sum() >= MIN_VISIBLE_FRACTION * f.sum()
    ]
    return image, instances


def render_sample(
    rng: np.random.Generator, size: int, backgrounds: str = "standard"
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one image (BGR uint8, each side in [0.75*size, size]) and its visible instances.

    `backgrounds` is "standard" (what training uses) or "unseen" (families training never draws).
    Returns the image and a list of (class_index, mask_bool[H, W]); masks are pairwise disjoint.
    """
    if size < MIN_IMAGE_SIZE:
        raise UsageError(f"size (--size) must be >= {MIN_IMAGE_SIZE} px, got {size}; pass a larger size")
    _check_backgrounds(backgrounds)
    low = int(math.ceil(0.75 * size))
    height, width = int(rng.integers(low, size + 1)), int(rng.integers(low, size + 1))
    # Re-render (same rng stream, so still deterministic) in the rare case nothing survives occlusion.
    for _ in range(20):
        image, instances = _render_once(rng, height, width, backgrounds)
        if instances:
            break
    return image, [(inst.class_index, inst.mask) for inst in instances]


# ----------------------------------------------------------------------------- dataset writing


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator for image `index` of `split`, so any image can be regenerated alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with ASCII counts (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _mask_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _check_args(out_dir: Path, n_train: int, n_val: int, size: int, seed: int, backgrounds: str) -> None:
    _check_backgrounds(backgrounds)
    for name, value in (("n_train (--train)", n_train), ("n_val (--val)", n_val)):
        if value < 0:
            raise UsageError(f"{name} must be >= 0, got {value}; pass a non-negative image count")
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise UsageError(f"size (--size) must be >= {MIN_IMAGE_SIZE} px and at most {MAX_IMAGE_SIZE}, got {size}")
    if seed < 0:
        raise UsageError(f"seed (--seed) must be >= 0, got {seed}; pass a non-negative seed")
    try:
        check_writable(out_dir, folder=True)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(
            f"output directory {out_dir} is not writable ({reason}); choose a writable directory"
        ) from None


def _annotation_file(split: str) -> str:
    return f"annotations/instances_{split}.json"


# What a dataset consists of, in the order it is moved into place: the annotations last, so that their
# presence means the images are complete.
DATASET_ENTRIES = ("train", "val", _annotation_file("train"), _annotation_file("val"))


def _write_split(out_dir: Path, split: str, n: int, size: int, seed: int, backgrounds: str) -> tuple[Path, Path]:
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(n), desc=f"shapes/{split}", unit="img", disable=n == 0):
        image, instances = render_sample(image_rng(seed, split, i), size, backgrounds)
        file_name = f"{i:06d}.png"
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {split}/{file_name}")
        atomic_write_bytes(image_dir / file_name, png.tobytes())
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for class_index, mask in instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "segmentation": encode_mask(mask),
                    "area": float(mask.sum()),
                    "bbox": _mask_bbox(mask),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": "trt_yolact synthetic shapes",
            "seed": seed,
            "split": split,
            "max_size": size,
            "backgrounds": backgrounds,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)],
    }
    ann_path = out_dir / _annotation_file(split)
    atomic_write_bytes(ann_path, json.dumps(coco, separators=(",", ":")).encode("utf-8"))
    return image_dir, ann_path


def generate_dataset(
    out_dir: str | os.PathLike, n_train: int, n_val: int, size: int, seed: int = 0, backgrounds: str = "standard"
) -> dict[str, Path]:
    """Write the train/val splits under `out_dir`; returns the paths of image folders and JSON files.

    The dataset is generated into a private folder and moved into place at the end, replacing an old one
    entirely (its splits' folders and annotation files): a failure or Ctrl-C leaves `out_dir` as it was.
    `backgrounds="unseen"` draws the same kinds of objects over background families that the standard
    set (used for training) never contains.

    Keys: "root", "train_images", "val_images", "train_annotations", "val_annotations".
    """
    out = Path(out_dir)
    _check_args(out, n_train, n_val, size, seed, backgrounds)
    with (
        memory_needed_for(f"{size} px images", "pass a smaller --size"),
        replaced_entries(out, DATASET_ENTRIES) as staging,
    ):
        (staging / "annotations").mkdir()
        for split, n in (("train", n_train), ("val", n_val)):
            _write_split(staging, split, n, size, seed, backgrounds)
    paths: dict[str, Path] = {"root": out}
    for split in ("train", "val"):
        paths[f"{split}_images"], paths[f"{split}_annotations"] = out / split, out / _annotation_file(split)
    return paths
