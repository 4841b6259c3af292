"""Image normalisation and batched preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trt_yolact.config import get_config
from trt_yolact.errors import ImageError
from trt_yolact.inference.preprocess import preprocess, to_bgr_uint8

CONFIG = get_config("yolact_base").replace(max_size=64)


def test_gray_alpha_and_16_bit_are_normalised():
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = color[:, :, 0]
    assert to_bgr_uint8(gray).shape == (20, 30, 3)
    assert np.array_equal(to_bgr_uint8(gray)[:, :, 2], gray)
    bgra = np.dstack([color, np.full((20, 30), 7, np.uint8)])
    assert np.array_equal(to_bgr_uint8(bgra), color)
    wide = color.astype(np.uint16) * 257
    assert np.array_equal(to_bgr_uint8(wide), color)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0), np.uint8), np.zeros(0, np.uint8), np.zeros((4, 4, 2), np.uint8)],
)
def test_bad_images_raise_clear_errors(bad):
    with pytest.raises(ImageError):
        preprocess([bad], CONFIG)


def test_batch_of_mixed_sizes_equals_singles():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(40, 50, 3), (33, 17, 3), (40, 50, 3)]]
    batch, sizes = preprocess(images, CONFIG)
    assert batch.shape == (3, 3, 64, 64) and sizes == [(40, 50), (33, 17), (40, 50)]
    for i, image in enumerate(images):
        single, _ = preprocess([image], CONFIG)
        assert torch.equal(batch[i], single[0])


def test_channels_end_in_rgb_order_and_darknet_scaling():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :, 0] = 255  # pure blue in BGR
    darknet = get_config("yolact_darknet53").replace(max_size=32)
    batch, _ = preprocess([image], darknet)
    assert torch.allclose(batch[0, 2], torch.ones(32, 32)) and torch.allclose(batch[0, 0], torch.zeros(32, 32))
