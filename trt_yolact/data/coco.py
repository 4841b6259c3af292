"""COCO-format instance-segmentation dataset and loader for YOLACT training/evaluation."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DatasetError, UsageError
from .augment import TransformResult

# transform(image_bgr_hwc, masks[N,H,W], boxes_px[N,4], labels[N], num_crowds) -> TransformResult
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], TransformResult]

_REQUIRED_TOP_KEYS = ("images", "annotations", "categories")
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
_REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "bbox")
_REQUIRED_CAT_KEYS = ("id", "name")
_EVALUATION_ANN_KEYS = ("area", "iscrowd", "segmentation")  # COCOeval reads these from every annotation
_NUMBER_TYPES = (int, float)


@dataclass
class Sample:
    """One dataset item. N instances, crowd instances last."""

    image: torch.Tensor  # float32 [3, S, S]
    boxes: torch.Tensor  # float32 [N, 4] x1, y1, x2, y2 normalised to [0, 1]
    labels: torch.Tensor  # int64 [N], 0-based, no background class
    masks: torch.Tensor  # uint8 [N, S, S]
    num_crowds: int  # the last num_crowds instances are iscrowd regions
    image_id: int
    orig_size: tuple[int, int]  # (height, width) of the image on disk


@dataclass
class Batch:
    """Collated samples; per-image targets stay lists because N varies."""

    images: torch.Tensor  # float32 [B, 3, S, S]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    masks: list[torch.Tensor]
    num_crowds: list[int]
    image_ids: list[int]
    orig_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.to(device, non_blocking=non_blocking) for t in tensors]

        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            move(self.boxes),
            move(self.labels),
            move(self.masks),
            list(self.num_crowds),
            list(self.image_ids),
            list(self.orig_sizes),
        )


def load_coco_json(ann_file: str | os.PathLike, evaluation: bool = False) -> dict[str, Any]:
    """A COCO instances file, parsed and checked entry by entry before any work uses it: every problem is
    one :class:`DatasetError` naming the entry. Training, evaluation and ``predict --ann`` share these rules.

    ``evaluation``: the file is ground truth for COCOeval, which also reads every annotation's ``area``,
    ``iscrowd`` and ``segmentation`` (polygons of 3 points or more) and has no AP without annotations.
    """
    path = Path(ann_file)
    where = f"annotation file {path}"
    data = _read_json(path, where)
    _check_top_level(data, where, evaluation)
    required_anns = _REQUIRED_ANN_KEYS + (_EVALUATION_ANN_KEYS if evaluation else ())
    for key, required in (
        ("images", _REQUIRED_IMAGE_KEYS),
        ("annotations", required_anns),
        ("categories", _REQUIRED_CAT_KEYS),
    ):
        _check_fields(data[key], key, required, where)
    category_ids = set(_unique_ids(data["categories"], "categories", where))
    _unique_ids(data["annotations"], "annotations", where)
    sizes = _image_sizes(data["images"], where)
    for i, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(ann, sizes, category_ids, evaluation)
        if problem is not None:
            raise DatasetError(f"{where}: annotations[{i}] (id {ann['id']}) {problem}")
    return data


def _read_json(path: Path, where: str) -> Any:
    if path.is_dir():
        raise DatasetError(f"{where} is a folder; pass the path of a COCO instances_*.json file")
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist; pass the path of a COCO instances_*.json file")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{where} is not valid JSON ({err}); pass a COCO instances_*.json file") from None


def _check_top_level(data: Any, where: str, evaluation: bool) -> None:
    missing = [k for k in _REQUIRED_TOP_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetError(
            f"{where} is not a COCO annotation file: missing top-level key(s) {', '.join(missing)}; "
            "expected 'images', 'annotations' and 'categories' lists"
        )
    for key in _REQUIRED_TOP_KEYS:
        if not isinstance(data[key], list):
            raise DatasetError(f"{where}: '{key}' must be a list, got {type(data[key]).__name__}")
    if not data["categories"]:
        raise DatasetError(
            f"{where} has an empty 'categories' list; add at least one category ({{'id': 1, 'name': ...}})"
        )
    if evaluation and not data["annotations"]:
        raise DatasetError(f"{where} has no annotations: COCO AP is undefined without ground truth")


def _check_fields(entries: list[Any], key: str, required: tuple[str, ...], where: str) -> None:
    for i, entry in enumerate(entries):
        lacking = [k for k in required if not isinstance(entry, dict) or k not in entry]
        if lacking:
            raise DatasetError(
                f"{where}: {key}[{i}] lacks field(s) {', '.join(lacking)}; "
                f"every entry of '{key}' needs {', '.join(required)}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _are_numbers(values: Any) -> bool:
    """A list of finite numbers (NaN and inf propagate through the sum; bools are not numbers here)."""
    return (
        isinstance(values, list) and all(type(v) in _NUMBER_TYPES for v in values) and math.isfinite(sum(values, 0.0))
    )


def _unique_ids(entries: list[dict[str, Any]], key: str, where: str) -> list[int]:
    ids: list[int] = []
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        value = entry["id"]
        if not _is_int(value):
            raise DatasetError(f"{where}: {key}[{i}] has id {value!r}; ids must be integers")
        if value in seen:
            raise DatasetError(f"{where}: {key}[{i}] repeats id {value}; the ids of '{key}' must be unique")
        seen.add(value)
        ids.append(value)
    return ids


def _image_sizes(images: list[dict[str, Any]], where: str) -> dict[int, tuple[int, int]]:
    """Image id -> (height, width), each image's fields checked."""
    ids = _unique_ids(images, "images", where)
    for i, image in enumerate(images):
        name = image["file_name"]
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: images[{i}] has file_name {name!r}; it must be a non-empty string")
        if not all(_is_int(image[k]) and image[k] > 0 for k in ("height", "width")):
            raise DatasetError(
                f"{where}: images[{i}] ({name}) is {image['width']!r} x {image['height']!r}; "
                "width and height must be positive integers"
            )
    return {image_id: (image["height"], image["width"]) for image_id, image in zip(ids, images)}


def _annotation_problem(
    ann: dict[str, Any], sizes: dict[int, tuple[int, int]], category_ids: set[int], evaluation: bool
) -> str | None:
    """What is wrong with one annotation, or None."""
    if not _is_int(ann["image_id"]) or ann["image_id"] not in sizes:
        return f"refers to image_id {ann['image_id']!r}, which is not in 'images'"
    if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
        return f"uses category_id {ann['category_id']!r}, which is not in 'categories' {sorted(category_ids)}"
    box = ann["bbox"]
    if not _are_numbers(box) or len(box) != 4 or box[2] < 0 or box[3] < 0:
        return f"has bbox {box!r}; a bbox is [x, y, width, height]: 4 finite numbers, width and height >= 0"
    if "area" in ann and not (_are_numbers([ann["area"]]) and ann["area"] >= 0):
        return f"has area {ann['area']!r}; it must be a finite number >= 0"
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        return f"has iscrowd {ann['iscrowd']!r}; it must be 0 or 1"
    segm = ann.get("segmentation")
    if segm is None and not evaluation:
        return None  # detection-only data: the box is the mask
    problem = _segmentation_problem(segm, *sizes[ann["image_id"]], evaluation)
    return None if problem is None else f"has a bad segmentation: {problem}"


def _segmentation_problem(segm: Any, height: int, width: int, evaluation: bool) -> str | None:
    if isinstance(segm, dict):
        return _rle_problem(segm, height, width)
    if not isinstance(segm, list):
        return f"expected polygons (a list) or an RLE (a dict), got {type(segm).__name__}"
    if evaluation and not segm:
        return "an empty list of polygons; COCO evaluation needs a mask"
    for polygon in segm:
        if not _are_numbers(polygon) or len(polygon) % 2:
            return "a polygon must be a flat list of x, y numbers"
        if evaluation and len(polygon) < 6:
            return f"a polygon of {len(polygon) // 2} point(s); COCO evaluation needs at least 3"
    return None


def _rle_problem(segm: dict[str, Any], height: int, width: int) -> str | None:
    if "counts" not in segm or "size" not in segm:
        return "an RLE needs both 'size' and 'counts'"
    if segm["size"] != [height, width]:
        return f"RLE size {segm['size']!r} does not match the image size [{height}, {width}]"
    counts = segm["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            return f"uncompressed RLE counts must be integers >= 0 that add up to height x width ({height * width})"
        return None
    if not isinstance(counts, str):
        return f"RLE counts must be a string or a list of integers, got {type(counts).__name__}"
    try:
        with warnings.catch_warnings():  # the numpy-2 __array__ warning of decode_rles
            warnings.simplefilter("ignore", DeprecationWarning)
            mask_utils.decode({"size": [height, width], "counts": counts.encode("ascii")})
    except ValueError:  # also a UnicodeEncodeError: non-ASCII counts
        return "its compressed RLE counts do not decode to a height x width mask"
    return None


def ann_to_rle(ann: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Polygon, uncompressed RLE or compressed RLE -> compressed RLE.

    An annotation without segmentation (detection-only data) gets its filled box as mask.
    """
    segm = ann.get("segmentation")
    if isinstance(segm, dict) and "counts" in segm:
        if [int(s) for s in segm.get("size", ())] != [height, width]:
            raise DatasetError(
                f"annotation {ann.get('id')}: RLE size {segm.get('size')} does not match the image "
                f"size [{height}, {width}]; the annotation file and images do not belong together"
            )
        return mask_utils.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
    # pycocotools reads a 4-number "polygon" as a box, so drop degenerate polygons first.
    polygons = [p for p in segm if len(p) >= 6] if isinstance(segm, list) else []
    if polygons:
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.frPyObjects(np.asarray([ann["bbox"]], dtype=np.float64), height, width)[0]


def decode_rles(rles: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Decode RLEs to uint8 masks [N, height, width] in one call."""
    if not rles:
        return np.zeros((0, height, width), dtype=np.uint8)
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a harmless numpy-2 __array__ DeprecationWarning.
        warnings.simplefilter("ignore", DeprecationWarning)
        masks = mask_utils.decode(list(rles))
    return np.ascontiguousarray(masks.transpose(2, 0, 1), dtype=np.uint8)


def ann_to_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode one annotation's segmentation to a uint8 [height, width] mask."""
    return decode_rles([ann_to_rle(ann, height, width)], height, width)[0]


class CocoDetection(Dataset):
    """COCO instance-segmentation dataset.

    Category ids are mapped to contiguous 0-based labels in sorted id order (`category_ids[label]`
    gives the dataset id back). Crowd annotations are kept, after all non-crowd ones, with their
    count in `Sample.num_crowds`. Images with no usable non-crowd annotation are skipped unless
    `keep_empty` (use True for evaluation). All inputs are validated here, not on first access.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transform: Transform | None = None,
        keep_empty: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transform = transform
        self.keep_empty = keep_empty
        # Images kept without annotations: a set scored with COCOeval (training's validation), so the file
        # is checked for what COCOeval reads before any training starts.
        data = load_coco_json(self.ann_file, evaluation=keep_empty)
        if not self.image_dir.is_dir():
            state = "is a file, not a folder" if self.image_dir.exists() else "does not exist"
            raise FileNotFoundError(
                f"image directory {self.image_dir} {state}; pass the folder that holds "
                f"the images listed in {self.ann_file.name}"
            )

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: tuple[int, ...] = tuple(int(c["id"]) for c in categories)
        self.class_names: tuple[str, ...] = tuple(str(c["name"]) for c in categories)
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

        self._coco = COCO()
        self._coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            self._coco.createIndex()
        self._check_images_exist(data["images"])

        # Per image: non-crowd annotations in file order, then crowd ones. Degenerate boxes are skipped.
        self._anns: dict[int, list[dict[str, Any]]] = {}
        self.ids: list[int] = []
        for img in data["images"]:
            anns = [a for a in self._coco.imgToAnns.get(img["id"], []) if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
            objects = [a for a in anns if not a.get("iscrowd", 0)]
            crowds = [a for a in anns if a.get("iscrowd", 0)]
            if objects or keep_empty:
                self.ids.append(int(img["id"]))
                self._anns[int(img["id"])] = objects + crowds
        if not self.ids:  # an empty epoch would have no length to divide the schedule by
            raise DatasetError(
                f"no image in {self.ann_file} has an annotation to train on (a non-crowd box of 1 px or more)"
            )

    def _check_images_exist(self, images: list[dict[str, Any]]) -> None:
        missing = [img["file_name"] for img in images if not (self.image_dir / img["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} images listed in {self.ann_file.name} are missing "
                f"from {self.image_dir} (first: {missing[0]}); check that image_dir matches the "
                "annotation file"
            )

    @property
    def coco(self) -> COCO:
        """The pycocotools index (ground truth for COCOeval)."""
        return self._coco

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
        """(image BGR uint8 HWC, masks uint8 [N,H,W], boxes px x1y1x2y2 [N,4], labels [N], num_crowds, image_id)."""
        image_id = self.ids[index]
        info = self._coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(
                f"could not decode image {path}; the file is corrupt or not an image, replace or remove it"
            )
        height, width = image.shape[:2]
        if (height, width) != (int(info["height"]), int(info["width"])):
            raise DatasetError(
                f"image {path} is {width}x{height} but {self.ann_file.name} says "
                f"{info['width']}x{info['height']}; the annotations do not match this image"
            )
        anns = self._anns[image_id]
        masks = decode_rles([ann_to_rle(a, height, width) for a in anns], height, width)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        labels = np.zeros(len(anns), dtype=np.int64)
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            boxes[i] = (x, y, x + w, y + h)
            labels[i] = self._label_of[ann["category_id"]]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        num_crowds = sum(1 for a in anns if a.get("iscrowd", 0))
        return image, masks, boxes, labels, num_crowds, image_id

    def __getitem__(self, index: int) -> Sample:
        image, masks, boxes, labels, num_crowds, image_id = self.load_raw(index)
        height, width = image.shape[:2]
        if self.transform is None:
            # No resize/normalisation; only the layout (RGB, CHW, float) matches transformed output.
            result = TransformResult(
                image=np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32),
                masks=masks,
                boxes=boxes / np.array([width, height, width, height], dtype=np.float32),
                labels=labels,
                num_crowds=num_crowds,
            )
        else:
            result = self.transform(image, masks, boxes, labels, num_crowds)
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(result.image, dtype=np.float32)),
            boxes=torch.from_numpy(np.ascontiguousarray(result.boxes, dtype=np.float32).reshape(-1, 4)),
            labels=torch.from_numpy(np.ascontiguousarray(result.labels, dtype=np.int64)),
            masks=torch.from_numpy(np.ascontiguousarray(result.masks, dtype=np.uint8)),
            num_crowds=int(result.num_crowds),
            image_id=image_id,
            orig_size=(height, width),
        )


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack images; keep variable-length targets as lists."""
    if not samples:
        raise DatasetError("cannot collate an empty list of samples")
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) > 1:
        raise DatasetError(
            f"images in a batch differ in shape {sorted(shapes)}; use a transform that resizes to a "
            "fixed max_size (TrainTransform/ValTransform)"
        )
    return Batch(
        images=torch.stack([s.image for s in samples]),
        boxes=[s.boxes for s in samples],
        labels=[s.labels for s in samples],
        masks=[s.masks for s in samples],
        num_crowds=[s.num_crowds for s in samples],
        image_ids=[s.image_id for s in samples],
        orig_sizes=[s.orig_size for s in samples],
    )


def _reseedable_transforms(dataset: Any) -> list[Any]:
    """Transforms with a `reseed` method, looking through Subset/ConcatDataset wrappers."""
    found, stack = [], [dataset]
    while stack:
        ds = stack.pop()
        transform = getattr(ds, "transform", None)
        if callable(getattr(transform, "reseed", None)):
            found.append(transform)
        stack.extend(getattr(ds, "datasets", []))
        if getattr(ds, "dataset", None) is not None:
            stack.append(ds.dataset)
    return found


def _seed_worker(worker_id: int) -> None:
    # torch.initial_seed() in a worker is base_seed + worker_id, and base_seed comes from the loader's
    # seeded generator: every worker (and every epoch) gets a distinct but reproducible stream.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        for transform in _reseedable_transforms(info.dataset):
            transform.reseed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader yielding `Batch`es; shuffling and worker augmentation are seeded by `seed`.

    With workers=0 the augmentation stream is the transform's own (e.g. TrainTransform(seed=...)).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    if sampler is not None and shuffle:
        raise UsageError("pass either shuffle=True or a sampler, not both; the sampler decides the order")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
