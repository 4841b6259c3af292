"""Our model against outputs of the original YOLACT implementation (../shared/reference)."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from conftest import load_expected

from trt_yolact.inference.postprocess import postprocess
from trt_yolact.inference.preprocess import preprocess
from trt_yolact.runtime.torch_runner import TorchRunner

IMAGES = ["chelsea", "shapes"]


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@pytest.mark.parametrize("name", IMAGES)
def test_preprocess_matches_original(reference_dir, fixture_model, name):
    expected = load_expected(reference_dir, name)
    image = cv2.imread(str(reference_dir / f"{name}.png"))
    batch, sizes = preprocess([image], fixture_model.config)
    assert sizes == [image.shape[:2]]
    np.testing.assert_allclose(batch.numpy(), expected["input"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", IMAGES)
def test_raw_outputs_match_original(reference_dir, fixture_model, name):
    expected = load_expected(reference_dir, name)
    with torch.no_grad():
        raw = fixture_model(torch.from_numpy(expected["input"]))
    for field in ("loc", "conf", "coeffs", "proto", "priors"):
        got = getattr(raw, field).numpy()
        assert got.shape == expected[field].shape, field
        np.testing.assert_allclose(got, expected[field], atol=1e-4, rtol=0, err_msg=field)


@pytest.mark.parametrize("name", IMAGES)
def test_detections_match_original(reference_dir, fixture_model, name):
    expected = load_expected(reference_dir, name)
    image = cv2.imread(str(reference_dir / f"{name}.png"))
    with torch.no_grad():
        batch, sizes = preprocess([image], fixture_model.config)
        detections = postprocess(fixture_model(batch), sizes)[0]
    assert detections.classes.tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(detections.scores.numpy(), expected["scores"], atol=1e-4, rtol=0)
    assert np.abs(detections.boxes.numpy() - expected["boxes"]).max() <= 1
    masks = detections.masks.numpy()
    assert masks.shape == expected["masks_full"].shape
    assert mask_ious(masks, expected["masks_full"]).min() >= 0.99


@pytest.mark.parametrize("name", IMAGES)
def test_cpu_torch_runner_in_nhwc_matches_original(reference_dir, fixture_model, name):
    """The torch runner runs channels-last on the CPU by default (faster oneDNN kernels); it must still
    reproduce the original's raw outputs and detections."""
    expected = load_expected(reference_dir, name)
    runner = TorchRunner(copy.deepcopy(fixture_model), "cpu")
    assert runner.channels_last
    assert runner.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    raw = runner(torch.from_numpy(expected["input"]))
    for field in ("loc", "conf", "coeffs", "proto", "priors"):
        np.testing.assert_allclose(getattr(raw, field).numpy(), expected[field], atol=1e-4, rtol=0, err_msg=field)
    image = cv2.imread(str(reference_dir / f"{name}.png"))
    detections = postprocess(raw, [image.shape[:2]])[0]
    assert detections.classes.tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(detections.scores.numpy(), expected["scores"], atol=1e-4, rtol=0)
    assert mask_ious(detections.masks.numpy(), expected["masks_full"]).min() >= 0.99


def test_detections_of_both_images_in_one_batch(reference_dir, fixture_model):
    """Images of different sizes batched together give each image's reference detections."""
    images = [cv2.imread(str(reference_dir / f"{n}.png")) for n in IMAGES]
    with torch.no_grad():
        batch, sizes = preprocess(images, fixture_model.config)
        results = postprocess(fixture_model(batch), sizes)
    for name, detections in zip(IMAGES, results):
        expected = load_expected(reference_dir, name)
        assert detections.classes.tolist() == expected["classes"].tolist()
        assert np.abs(detections.boxes.numpy() - expected["boxes"]).max() <= 1
        assert mask_ious(detections.masks.numpy(), expected["masks_full"]).min() >= 0.99
