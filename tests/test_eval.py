"""COCO evaluation on a tiny synthetic annotation set with known answers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from trt_yolact.config import YolactConfig
from trt_yolact.inference.coco_results import encode_mask
from trt_yolact.metrics.coco_eval import evaluate
from trt_yolact.structures import Detections

CONFIG = YolactConfig(name="toy", class_names=("square", "bar"), category_ids=(3, 7))


def make_dataset(tmp_path, rects):
    """rects[i] = list of (category_id, x1, y1, x2, y2) for image i (60x80)."""
    images, annotations = [], []
    (tmp_path / "img").mkdir()
    for i, objects in enumerate(rects):
        cv2.imwrite(str(tmp_path / "img" / f"im{i}.png"), np.full((60, 80, 3), 40 * i, np.uint8))
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "height": 60, "width": 80})
        for cat, x1, y1, x2, y2 in objects:
            mask = np.zeros((60, 80), np.uint8)
            mask[y1:y2, x1:x2] = 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 10 + i,
                    "category_id": cat,
                    "iscrowd": 0,
                    "segmentation": encode_mask(mask),
                    "area": float(mask.sum()),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}],
            }
        )
    )
    return ann, tmp_path / "img"


class ScriptedPredictor:
    """Stands in for a model: returns given detections per image, in call order."""

    def __init__(self, per_image):
        self.config = CONFIG
        self.per_image = list(per_image)

    def __call__(self, images):
        out = []
        for image in images:
            objects = self.per_image.pop(0)
            h, w = image.shape[:2]
            masks = torch.zeros((len(objects), h, w), dtype=torch.bool)
            for k, (_, x1, y1, x2, y2, _) in enumerate(objects):
                masks[k, y1:y2, x1:x2] = True
            out.append(
                Detections(
                    boxes=torch.tensor([o[1:5] for o in objects], dtype=torch.int64).reshape(-1, 4),
                    scores=torch.tensor([o[5] for o in objects], dtype=torch.float32),
                    classes=torch.tensor([CONFIG.category_ids.index(o[0]) for o in objects], dtype=torch.int64),
                    masks=masks,
                    image_size=(h, w),
                )
            )
        return out


RECTS = [[(3, 5, 5, 30, 30), (7, 40, 10, 75, 20)], [(3, 10, 20, 50, 55)], [(7, 2, 2, 12, 50)]]


def test_perfect_detections_score_ap_one(tmp_path):
    ann, images = make_dataset(tmp_path, RECTS)
    predictor = ScriptedPredictor([[(*o, 0.9) for o in objs] for objs in RECTS])
    result, results = evaluate(predictor, ann, images, batch_size=2, progress=False)
    assert result.bbox["AP"] == pytest.approx(1.0) and result.segm["AP"] == pytest.approx(1.0)
    assert result.segm["AP50"] == pytest.approx(1.0) and result.images_evaluated == 3 and result.images_missing == []
    assert {r["category_id"] for r in results} == {3, 7}


def test_wrong_class_and_missed_objects_lower_ap(tmp_path):
    ann, images = make_dataset(tmp_path, RECTS)
    # Image 0: the bar is labelled a square; image 2: nothing found.
    scripted = [[(3, 5, 5, 30, 30, 0.9), (3, 40, 10, 75, 20, 0.8)], [(3, 10, 20, 50, 55, 0.9)], []]
    result, _ = evaluate(ScriptedPredictor(scripted), ann, images, progress=False)
    # Squares: 2 of 2 found, a false positive ranked below both -> AP 1. Bars: 0 of 2 -> AP 0.
    assert result.bbox["AP"] == pytest.approx(0.5, abs=1e-6)
    assert result.segm["AP"] == pytest.approx(0.5, abs=1e-6)


def test_bad_annotation_files(tmp_path):
    _, images = make_dataset(tmp_path, RECTS)
    with pytest.raises(FileNotFoundError):
        evaluate(ScriptedPredictor([]), tmp_path / "nope.json", images, progress=False)
    not_coco = tmp_path / "x.json"
    not_coco.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        evaluate(ScriptedPredictor([]), not_coco, images, progress=False)
