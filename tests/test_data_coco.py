"""COCO dataset: round trip through generated shapes data, crowd ordering, input validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from trt_yolact.data.augment import TrainTransform, ValTransform
from trt_yolact.data.coco import Batch, CocoDetection, Sample, ann_to_mask, collate_samples, make_loader
from trt_yolact.data.synthetic import SHAPE_CLASSES, generate_dataset

SIZE = 48


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 6, 2, 64, seed=11)


def _raw(shapes: dict[str, Path]) -> dict[str, Any]:
    return json.loads(shapes["train_annotations"].read_text())


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths over the column-major flattening, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _extent(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask.numpy())
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_val_round_trip_boxes_match_masks(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_annotations"], shapes["train_images"], ValTransform(SIZE))
    raw = _raw(shapes)
    assert len(ds) == 6
    assert ds.class_names == SHAPE_CLASSES
    assert ds.category_ids == (1, 2, 3, 4, 5)
    for i in range(len(ds)):
        s = ds[i]
        assert isinstance(s, Sample)
        n = len(s.labels)
        assert s.image.shape == (3, SIZE, SIZE) and s.image.dtype == torch.float32
        assert s.masks.shape == (n, SIZE, SIZE) and s.masks.dtype == torch.uint8
        assert s.boxes.shape == (n, 4) and s.boxes.dtype == torch.float32
        assert s.labels.dtype == torch.int64 and s.num_crowds == 0
        assert (s.boxes >= 0).all() and (s.boxes <= 1).all()
        info = next(im for im in raw["images"] if im["id"] == s.image_id)
        assert s.orig_size == (info["height"], info["width"])
        expected = [a["category_id"] - 1 for a in raw["annotations"] if a["image_id"] == s.image_id]
        assert s.labels.tolist() == expected
        for box, mask in zip(s.boxes * SIZE, s.masks):
            assert mask.any()
            assert np.allclose(_extent(mask), box.numpy(), atol=2.0), (_extent(mask), box)


def test_no_transform_keeps_pixels(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_annotations"], shapes["train_images"])
    s = ds[0]
    h, w = s.orig_size
    assert s.image.shape == (3, h, w) and s.masks.shape[1:] == (h, w)
    for box, mask in zip(s.boxes * torch.tensor([w, h, w, h]), s.masks):
        assert np.allclose(_extent(mask), box.numpy(), atol=1e-3)


@pytest.fixture()
def crowd_file(shapes: dict[str, Path], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Image 1 gets: its first object turned into an uncompressed-RLE crowd region, and a new
    polygon object appended after it, so crowd order must be fixed by the dataset."""
    raw = copy.deepcopy(_raw(shapes))
    info = next(im for im in raw["images"] if im["id"] == 1)
    h, w = info["height"], info["width"]
    first = next(a for a in raw["annotations"] if a["image_id"] == 1)
    mask = ann_to_mask(first, h, w)
    first["iscrowd"] = 1
    first["segmentation"] = _uncompressed_rle(mask)
    polygon = [[4.0, 4.0, 20.0, 4.0, 20.0, 14.0, 4.0, 14.0]]
    raw["annotations"].append(
        {
            "id": 10_000,
            "image_id": 1,
            "category_id": 2,
            "segmentation": polygon,
            "area": 160.0,
            "bbox": [4.0, 4.0, 16.0, 10.0],
            "iscrowd": 0,
        }
    )
    return _write(tmp_path / "crowd.json", raw), {
        "mask": mask,
        "label": first["category_id"] - 1,
        "n": sum(a["image_id"] == 1 for a in raw["annotations"]),
    }


def test_crowds_come_last(shapes: dict[str, Path], crowd_file: tuple[Path, dict[str, Any]]) -> None:
    path, expect = crowd_file
    ds = CocoDetection(path, shapes["train_images"])
    index = ds.ids.index(1)
    s = ds[index]
    assert len(s.labels) == expect["n"]
    assert s.num_crowds == 1
    assert s.labels[-1].item() == expect["label"]
    assert np.array_equal(s.masks[-1].numpy(), expect["mask"]), "uncompressed RLE must decode to the same mask"
    assert s.labels[-2].item() == 1, "the polygon object must come before the crowd"
    polygon_mask = s.masks[-2].numpy()
    assert polygon_mask[8, 10] == 1 and polygon_mask[30, 40] == 0
    assert abs(int(polygon_mask.sum()) - 160) <= 30

    # Transforms keep crowds at the end and report their count.
    for transform in (ValTransform(SIZE), TrainTransform(SIZE, seed=0)):
        t = CocoDetection(path, shapes["train_images"], transform)[index]
        assert 0 <= t.num_crowds <= 1 and len(t.labels) == len(t.boxes) == len(t.masks)
        if t.num_crowds:
            assert t.labels[-1].item() == expect["label"]


def test_crowd_only_and_empty_images_need_keep_empty(shapes: dict[str, Path], tmp_path: Path) -> None:
    raw = copy.deepcopy(_raw(shapes))
    raw["images"].append({**raw["images"][0], "id": 999})  # same file, no annotations
    for ann in raw["annotations"]:
        if ann["image_id"] == 2:
            ann["iscrowd"] = 1
    path = _write(tmp_path / "empty.json", raw)
    assert CocoDetection(path, shapes["train_images"]).ids == [1, 3, 4, 5, 6]
    ds = CocoDetection(path, shapes["train_images"], ValTransform(SIZE), keep_empty=True)
    assert ds.ids == [1, 2, 3, 4, 5, 6, 999]
    empty = ds[ds.ids.index(999)]
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, SIZE, SIZE) and empty.num_crowds == 0
    crowd_only = ds[ds.ids.index(2)]
    assert crowd_only.num_crowds == len(crowd_only.labels) > 0


def test_compressed_rle_bytes_and_polygon_decode() -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:7, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    ann = {"id": 1, "bbox": [3, 2, 6, 5], "segmentation": rle}
    assert np.array_equal(ann_to_mask(ann, 10, 12), mask)
    ann["segmentation"] = {"size": [10, 12], "counts": rle["counts"].decode("ascii")}
    assert np.array_equal(ann_to_mask(ann, 10, 12), mask)
    ann["segmentation"] = []  # detection-only annotation: the box becomes the mask
    assert np.array_equal(ann_to_mask(ann, 10, 12), mask)
    ann["segmentation"] = {"size": [11, 12], "counts": rle["counts"]}
    with pytest.raises(ValueError, match="does not match the image size"):
        ann_to_mask(ann, 10, 12)


def test_loader_batches_and_is_seeded(shapes: dict[str, Path]) -> None:
    def run() -> list[Batch]:
        ds = CocoDetection(shapes["train_annotations"], shapes["train_images"], TrainTransform(SIZE, seed=0))
        return list(make_loader(ds, batch_size=4, shuffle=True, workers=2, seed=123))

    first, second = run(), run()
    assert [len(b) for b in first] == [4, 2]
    b = first[0]
    assert b.images.shape == (4, 3, SIZE, SIZE)
    assert len(b.boxes) == len(b.masks) == len(b.labels) == len(b.num_crowds) == len(b.orig_sizes) == 4
    for x, y in zip(first, second):
        assert x.image_ids == y.image_ids
        assert torch.equal(x.images, y.images)
        assert all(torch.equal(p, q) for p, q in zip(x.boxes, y.boxes))
    assert sorted(i for b in first for i in b.image_ids) == [1, 2, 3, 4, 5, 6]


def test_workers_do_not_share_augmentation(shapes: dict[str, Path]) -> None:
    # Both workers start from a copy of the same TrainTransform; without per-worker reseeding the
    # first item of each worker would be augmented identically.
    ds = CocoDetection(shapes["train_annotations"], shapes["train_images"], TrainTransform(SIZE, seed=0))
    same_image = torch.utils.data.Subset(ds, [0, 0])
    a, b = list(make_loader(same_image, batch_size=1, shuffle=False, workers=2, seed=5))
    assert a.image_ids == b.image_ids
    assert not torch.equal(a.images, b.images)


def test_loader_rejects_sampler_with_shuffle(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_annotations"], shapes["train_images"], ValTransform(SIZE))
    with pytest.raises(ValueError, match="not both"):
        make_loader(ds, 2, True, 0, 0, sampler=torch.utils.data.SequentialSampler(ds))
    loader = make_loader(ds, 3, False, 0, 0)
    assert [b.image_ids for b in loader] == [[1, 2, 3], [4, 5, 6]]


def test_collate_rejects_mixed_sizes(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_annotations"], shapes["train_images"])
    samples = [ds[i] for i in range(len(ds))]
    assert len({tuple(s.image.shape) for s in samples}) > 1
    with pytest.raises(ValueError, match="fixed max_size"):
        collate_samples(samples)


# --------------------------------------------------------------------------- bad input


def test_missing_annotation_file(shapes: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDetection(tmp_path / "nope.json", shapes["train_images"])


def test_not_json(shapes: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(path, shapes["train_images"])


@pytest.mark.parametrize("drop", ["images", "annotations", "categories"])
def test_not_coco(shapes: dict[str, Path], tmp_path: Path, drop: str) -> None:
    raw = _raw(shapes)
    del raw[drop]
    with pytest.raises(ValueError, match=f"missing top-level key.*{drop}"):
        CocoDetection(_write(tmp_path / "x.json", raw), shapes["train_images"])
    with pytest.raises(ValueError, match="missing top-level key"):
        CocoDetection(_write(tmp_path / "list.json", [1, 2]), shapes["train_images"])


def test_empty_categories(shapes: dict[str, Path], tmp_path: Path) -> None:
    raw = _raw(shapes)
    raw["categories"] = []
    with pytest.raises(ValueError, match="empty 'categories'"):
        CocoDetection(_write(tmp_path / "x.json", raw), shapes["train_images"])


def test_unknown_category(shapes: dict[str, Path], tmp_path: Path) -> None:
    raw = _raw(shapes)
    raw["annotations"][0]["category_id"] = 77
    with pytest.raises(ValueError, match="category_id 77"):
        CocoDetection(_write(tmp_path / "x.json", raw), shapes["train_images"])


def test_missing_images_reported_with_count(shapes: dict[str, Path], tmp_path: Path) -> None:
    raw = _raw(shapes)
    raw["images"][2]["file_name"] = "gone_a.png"
    raw["images"][4]["file_name"] = "gone_b.png"
    with pytest.raises(FileNotFoundError, match=r"2 of 6 images .*first: gone_a\.png"):
        CocoDetection(_write(tmp_path / "x.json", raw), shapes["train_images"])
    with pytest.raises(FileNotFoundError, match="image directory"):
        CocoDetection(shapes["train_annotations"], tmp_path / "no_such_dir")
