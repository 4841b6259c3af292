"""Detections -> COCO results entries (the format pycocotools' ``loadRes`` reads)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from ..errors import UsageError
from ..structures import Detections


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Binary ``[H, W]`` mask -> COCO RLE with ASCII counts."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detections_to_coco(
    detections: Detections,
    image_id: int,
    category_ids: Sequence[int],
    file_name: str | None = None,
) -> list[dict[str, Any]]:
    """One entry per detection with box ``[x, y, w, h]`` and a full-resolution RLE mask.

    As in the original evaluation, detections whose integer box has no area are left out.
    """
    if len(detections) and detections.masks.dtype.is_floating_point:
        raise UsageError("COCO results need full-resolution masks (full_resolution_masks=True)")
    boxes = detections.boxes.cpu().numpy()
    scores = detections.scores.cpu().numpy()
    classes = detections.classes.cpu().numpy()
    masks = detections.masks.cpu().numpy()
    entries = []
    for i in range(len(scores)):
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        if (x2 - x1) * (y2 - y1) <= 0:
            continue
        class_index = int(classes[i])
        entry: dict[str, Any] = {}
        if file_name is not None:
            entry["file_name"] = file_name
        entry.update(
            image_id=int(image_id),
            category_id=int(category_ids[class_index]),
            class_index=class_index,
            score=float(scores[i]),
            bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            segmentation=encode_mask(masks[i]),
        )
        entries.append(entry)
    return entries


def image_id_for(path: Path, index: int, ids_by_name: Mapping[str, int | None] | None) -> int:
    """The annotation's id when known, else a numeric file stem (COCO style), else the 1-based index."""
    if ids_by_name is not None and ids_by_name.get(path.name) is not None:
        return ids_by_name[path.name]
    if re.fullmatch(r"\d+", path.stem):
        return int(path.stem)
    return index + 1


def image_ids(paths: Sequence[Path], ids_by_name: Mapping[str, int | None] | None = None) -> list[int]:
    """The image id of each path in the results (:func:`image_id_for`). With annotations (``ids_by_name``:
    file name -> id, None where several images share the name) every path must be one of their images, and
    no two paths may share an id: their detections would be scored against another image's annotations."""
    ids: list[int] = []
    first_with: dict[int, Path] = {}
    for index, path in enumerate(paths):
        if ids_by_name is not None and path.name not in ids_by_name:
            raise UsageError(f"{path} is not one of the images of the annotations (--ann): no image_id to give it")
        if ids_by_name is not None and ids_by_name[path.name] is None:
            raise UsageError(f"the annotations (--ann) list more than one image named {path.name}: which is {path}?")
        image_id = image_id_for(path, index, ids_by_name)
        if image_id in first_with:
            raise UsageError(
                f"{first_with[image_id]} and {path} would both be image_id {image_id} in the results: "
                "predict them in separate runs" + ("" if ids_by_name is not None else ", or pass --ann")
            )
        first_with[image_id] = path
        ids.append(image_id)
    return ids
