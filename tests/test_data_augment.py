"""Augmentation: box/mask/label consistency under random TrainTransform, determinism, normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trt_yolact.data.augment import (
    MEAN_BGR,
    TrainTransform,
    ValTransform,
    drop_small,
    photometric_distort,
    random_mirror,
    random_sample_crop,
    to_annotated,
)

RECT, ELLIPSE, CROWD = 0, 1, 9  # labels double as a record of each instance's shape and crowd flag
TOL = 2.0


@dataclass
class Case:
    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    num_crowds: int
    max_size: int
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    h, w = draw(st.integers(12, 48)), draw(st.integers(12, 48))
    n = draw(st.integers(0, 4))
    num_crowds = draw(st.integers(0, n))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    labels = np.zeros(n, np.int64)
    ys, xs = np.mgrid[0:h, 0:w]
    for i in range(n):
        x1, x2 = sorted(draw(st.lists(st.integers(0, w - 1), min_size=2, max_size=2, unique=True)))
        y1, y2 = sorted(draw(st.lists(st.integers(0, h - 1), min_size=2, max_size=2, unique=True)))
        crowd = i >= n - num_crowds
        if crowd or draw(st.booleans()):
            masks[i, y1 : y2 + 1, x1 : x2 + 1] = 1
            labels[i] = CROWD if crowd else RECT
        else:
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 + 0.5, (y2 - y1) / 2 + 0.5
            masks[i] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
            labels[i] = ELLIPSE
    boxes = np.zeros((n, 4), np.float32)
    for i, m in enumerate(masks):
        my, mx = np.nonzero(m)
        boxes[i] = (mx.min(), my.min(), mx.max() + 1, my.max() + 1)
    return Case(image, masks, boxes, labels, num_crowds, draw(st.integers(16, 48)), draw(st.integers(0, 10**6)))


def _check_result(result, case: Case) -> None:  # noqa: ANN001 (TransformResult)
    s = case.max_size
    n = len(result.labels)
    assert result.image.shape == (3, s, s) and result.image.dtype == np.float32
    assert np.isfinite(result.image).all()
    assert result.masks.shape == (n, s, s) and result.masks.dtype == np.uint8
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32
    assert result.labels.dtype == np.int64
    assert set(np.unique(result.masks)) <= {0, 1}
    # Crowds stay last and are counted.
    assert 0 <= result.num_crowds <= n
    assert (result.labels[n - result.num_crowds :] == CROWD).all()
    assert (result.labels[: n - result.num_crowds] != CROWD).all()
    assert (result.boxes >= -1e-6).all() and (result.boxes <= 1 + 1e-6).all()
    for box, mask, label in zip(result.boxes * s, result.masks, result.labels):
        assert box[2] > box[0] and box[3] > box[1]
        assert mask.any(), "a kept instance must have a non-empty mask"
        my, mx = np.nonzero(mask)
        assert mx.min() >= box[0] - TOL and mx.max() + 1 <= box[2] + TOL, (box, mx.min(), mx.max())
        assert my.min() >= box[1] - TOL and my.max() + 1 <= box[3] + TOL, (box, my.min(), my.max())
        if label in (RECT, CROWD):  # crop/mirror/resize keep a rectangle's box tight
            assert np.allclose((mx.min(), my.min(), mx.max() + 1, my.max() + 1), box, atol=TOL)


@settings(max_examples=25, deadline=None)
@given(cases())
def test_train_transform_keeps_targets_consistent(case: Case) -> None:
    transform = TrainTransform(case.max_size, seed=case.seed)
    result = transform(case.image, case.masks, case.boxes, case.labels, case.num_crowds)
    _check_result(result, case)
    # A rectangle that survives a plain resize comfortably is never lost entirely: crops must keep
    # a non-crowd object, and the transform retries when augmentation shrinks everything away.
    h, w = case.image.shape[:2]
    scale = np.array([case.max_size / w, case.max_size / h])
    sizes = (case.boxes[:, 2:] - case.boxes[:, :2]) * scale
    if ((case.labels == RECT) & (sizes.min(axis=1) >= 6)).any():
        assert (result.labels != CROWD).any()
    # Same seed, same output.
    again = TrainTransform(case.max_size, seed=case.seed)(
        case.image, case.masks, case.boxes, case.labels, case.num_crowds
    )
    assert np.array_equal(result.image, again.image)
    assert np.array_equal(result.masks, again.masks)
    assert np.array_equal(result.boxes, again.boxes)
    assert np.array_equal(result.labels, again.labels)


@settings(max_examples=25, deadline=None)
@given(cases())
def test_val_transform_keeps_every_instance(case: Case) -> None:
    result = ValTransform(case.max_size)(case.image, case.masks, case.boxes, case.labels, case.num_crowds)
    assert len(result.labels) == len(case.labels) and result.num_crowds == case.num_crowds
    h, w = case.image.shape[:2]
    expected = case.boxes / np.array([w, h, w, h], np.float32)
    assert np.allclose(result.boxes, expected, atol=1e-6)


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 56), np.uint8)
    masks[0, 5:30, 4:40] = 1
    masks[1, 10:38, 30:50] = 1
    boxes = np.array([[4, 5, 40, 30], [30, 10, 50, 38]], np.float32)
    return image, masks, boxes, np.array([1, 3])


def test_different_seeds_differ_and_stream_advances() -> None:
    args = _example()
    a = TrainTransform(32, seed=1)
    first, second = a(*args), a(*args)
    other = TrainTransform(32, seed=2)(*args)
    assert not np.array_equal(first.image, second.image), "successive calls must draw new augmentations"
    assert not np.array_equal(first.image, other.image)
    a.reseed(1)
    assert np.array_equal(a(*args).image, first.image)


def test_normalisation_modes_and_channel_order() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    empty = (np.zeros((0, 8, 8), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    scaled = ValTransform(8, normalize="scale")(image, *empty)
    assert np.allclose(scaled.image[2], 1.0) and np.allclose(scaled.image[:2], 0.0), "output must be RGB"
    mean_image = np.broadcast_to(MEAN_BGR, (8, 8, 3)).astype(np.float32)
    assert np.allclose(ValTransform(8)(mean_image, *empty).image, 0.0, atol=1e-5)
    assert scaled.boxes.shape == (0, 4) and scaled.masks.shape == (0, 8, 8)


def test_bad_inputs_raise_clear_errors() -> None:
    image, masks, boxes, labels = _example()
    transform = TrainTransform(32, seed=0)
    with pytest.raises(ValueError, match="masks must be"):
        transform(image, masks[:, :20], boxes, labels)
    with pytest.raises(ValueError, match="same length"):
        transform(image, masks, boxes[:1], labels)
    with pytest.raises(ValueError, match="3 \\(BGR\\) channels"):
        transform(image[..., 0], masks, boxes, labels)
    with pytest.raises(ValueError, match="num_crowds"):
        transform(image, masks, boxes, labels, num_crowds=3)
    with pytest.raises(ValueError, match="normalize must be one of"):
        ValTransform(32, normalize="imagenet")
    with pytest.raises(ValueError, match="max_size"):
        TrainTransform(0)


class FixedRng:
    """Stands in for numpy's Generator: fixed coin flips, mid-range (neutral) magnitudes."""

    def __init__(self, coin: float) -> None:
        self.coin = coin

    def random(self) -> float:
        return self.coin

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2.0


@pytest.mark.parametrize("coin", [0.0, 0.9])
def test_photometric_neutral_settings_keep_the_image(coin: float) -> None:
    # 0.9: every step skipped; 0.0: every step applied with neutral values (+0, x1, x1, +0 deg).
    image = np.random.default_rng(0).uniform(0, 255, (6, 7, 3)).astype(np.float32)
    out = photometric_distort(image, FixedRng(coin))  # type: ignore[arg-type]
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.allclose(out, image, atol=0.05)


def test_photometric_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (6, 7, 3)).astype(np.float32)
    for _ in range(20):
        out = photometric_distort(image, rng)
        assert out.min() >= 0.0 and out.max() <= 255.0 and not np.array_equal(out, image)


def test_mirror_flips_boxes_with_masks() -> None:
    image, masks, boxes, labels = _example()
    out = random_mirror(to_annotated(image, masks, boxes, labels), FixedRng(0.0))  # type: ignore[arg-type]
    assert np.array_equal(out.masks, masks[:, :, ::-1])
    assert np.array_equal(out.boxes, np.array([[16, 5, 52, 30], [6, 10, 26, 38]], np.float32))
    assert np.array_equal(out.image, image[:, ::-1].astype(np.float32))


def test_crop_always_keeps_a_non_crowd_object() -> None:
    h, w = 60, 60
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 2:6, 2:6] = 1  # small object in a corner
    masks[1, 10:58, 10:58] = 1  # large crowd region
    boxes = np.array([[2, 2, 6, 6], [10, 10, 58, 58]], np.float32)
    sample = to_annotated(np.zeros((h, w, 3), np.uint8), masks, boxes, np.array([0, 1]), num_crowds=1)
    rng = np.random.default_rng(0)
    cropped = 0
    for _ in range(60):
        out = random_sample_crop(sample, rng)
        assert (~out.crowd).any(), "a crop must keep at least one non-crowd object"
        assert out.crowd.tolist() == sorted(out.crowd.tolist()), "crowds stay last"
        cropped += int(out.image.shape[:2] != (h, w))
        for box, mask in zip(out.boxes, out.masks):
            ys, xs = np.nonzero(mask)
            assert np.allclose((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), box)
    assert cropped > 0


def test_drop_small_removes_tiny_boxes_and_empty_masks() -> None:
    masks = np.zeros((3, 20, 20), np.uint8)
    masks[0, 2:12, 2:12] = 1
    masks[1, 14:16, 14:16] = 1  # 2 px box: too small
    boxes = np.array([[2, 2, 12, 12], [14, 14, 16, 16], [5, 5, 15, 15]], np.float32)  # third: empty mask
    out = drop_small(to_annotated(np.zeros((20, 20, 3), np.uint8), masks, boxes, np.array([0, 1, 2])), 4.0)
    assert out.labels.tolist() == [0]
    assert out.masks.shape == (1, 20, 20) and out.boxes.shape == (1, 4)
