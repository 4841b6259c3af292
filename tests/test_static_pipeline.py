"""The device pipeline's CPU behaviour: uint8-frame pre-processing equal to the bit to :func:`preprocess`,
static-shape post-processing with the dynamic path's detections (synthetic outputs, the top-k boundary, real
images through the shipped demo model), and its stable top-k."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_postprocess import brute_force_fast_nms, random_raw

from trt_yolact.config import PostprocessConfig, get_config
from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.errors import ImageError, UsageError
from trt_yolact.inference.postprocess import postprocess
from trt_yolact.inference.preprocess import FramePreprocessor, preprocess, stack_frames, upload_frames
from trt_yolact.inference.static_postprocess import (
    postprocess_static,
    postprocess_static_tensors,
    split_detections,
    stable_topk_where,
)
from trt_yolact.model.checkpoint import load_model
from trt_yolact.structures import RawOutputs


def assert_same_detections(expected, got) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert a.image_size == b.image_size
        for name in ("boxes", "scores", "classes", "masks", "boxes_relative"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert torch.equal(x, y), name


# ---- pre-processing


@pytest.mark.parametrize(
    ("config", "size", "frame"),
    [("yolact_base", 550, (480, 640)), ("yolact_darknet53", 96, (37, 91)), ("yolact_shapes", 320, (600, 300))],
)
def test_frame_preprocessing_equals_preprocess_to_the_bit(config, size, frame):
    cfg = get_config(config).replace(max_size=size)
    rng = np.random.default_rng(size)
    images = [rng.integers(0, 256, (*frame, 3), dtype=np.uint8) for _ in range(3)]
    expected, sizes = preprocess(images, cfg)
    frames = upload_frames(images, "cpu")
    assert frames.dtype == torch.uint8 and frames.shape == (3, *frame, 3)
    got = FramePreprocessor(cfg)(frames)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)


def test_frame_upload_into_a_buffer_and_its_refusals():
    cfg = get_config("yolact_base").replace(max_size=64)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    gray = images[1][:, :, 0]
    buffer = torch.zeros((2, 20, 30, 3), dtype=torch.uint8)
    assert upload_frames([images[0], gray], "cpu", out=buffer) is buffer
    assert torch.equal(buffer[1], torch.from_numpy(np.repeat(gray[:, :, None], 3, axis=2)))  # like preprocess
    assert not stack_frames(images).is_pinned()
    with pytest.raises(ImageError, match="share one size"):
        stack_frames([images[0], images[0][:10]])
    with pytest.raises(ImageError, match="no images"):
        stack_frames([])
    with pytest.raises(ImageError, match="uint8"):
        FramePreprocessor(cfg)(buffer.float())


# ---- stable top-k


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 1e-30, 0.1, 0.25, 0.5, 1.0]), min_size=1, max_size=30),
    valid=st.lists(st.booleans(), min_size=30, max_size=30),
    k=st.integers(1, 30),
)
def test_stable_topk_where_equals_a_masked_stable_sort(values, valid, k):
    scores = torch.tensor([values, values[::-1]])
    mask = torch.tensor([valid[: len(values)], valid[: len(values)][::-1]])
    k = min(k, len(values))
    _, expected = torch.sort(scores.masked_fill(~mask, -1.0), dim=-1, descending=True, stable=True)
    index, is_valid = stable_topk_where(scores, mask, k)
    assert torch.equal(index, expected[:, :k])
    assert torch.equal(is_valid, torch.gather(mask, 1, index))


# ---- static post-processing against the dynamic path, synthetic outputs

CONFIGS = {
    "default": PostprocessConfig(),
    "small top-k": PostprocessConfig(top_k=7, max_detections=9),
    "cross class": PostprocessConfig(cross_class_nms=True, top_k=13),
    "score threshold": PostprocessConfig(score_threshold=0.5),
    "low-res masks": PostprocessConfig(full_resolution_masks=False),
    "uncropped": PostprocessConfig(crop_masks=False, max_detections=4),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_equals_dynamic_on_synthetic_outputs(name, seed):
    raw = random_raw(seed, batch=3, priors=200, classes=5, proto=12)
    sizes = [(40, 50), (33, 17), (40, 50)]
    assert_same_detections(postprocess(raw, sizes, CONFIGS[name]), postprocess_static(raw, sizes, CONFIGS[name]))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    priors=st.integers(1, 60),
    classes=st.integers(2, 5),
    top_k=st.integers(1, 12),
    max_dets=st.integers(1, 30),
    cross=st.booleans(),
)
def test_static_equals_dynamic_for_any_sizes(seed, priors, classes, top_k, max_dets, cross):
    raw = random_raw(seed, batch=2, priors=priors, classes=classes, proto=6)
    cfg = PostprocessConfig(conf_threshold=0.3, top_k=top_k, max_detections=max_dets, cross_class_nms=cross)
    assert_same_detections(postprocess(raw, [(9, 11)] * 2, cfg), postprocess_static(raw, [(9, 11)] * 2, cfg))


def test_images_without_detections_fill_every_slot_with_padding():
    raw = random_raw(3, batch=2, priors=20, classes=3)
    for cfg in (PostprocessConfig(conf_threshold=1.0), PostprocessConfig(score_threshold=1.0)):
        assert_same_detections(postprocess(raw, [(30, 40)] * 2, cfg), postprocess_static(raw, [(30, 40)] * 2, cfg))
        static = postprocess_static_tensors(raw, cfg)
        d = min(cfg.max_detections, 2 * min(cfg.top_k, 20))  # 2 classes without background, 20 priors
        assert static.selected.scores.shape == (2, d) and static.masks.shape == (2, d, 8, 8)
        assert not static.valid.any() and static.selected.num_detections.tolist() == [0, 0]
        assert (static.selected.classes == -1).all() and not static.masks.any() and not static.selected.boxes.any()


def crowded_raw(candidates: int, spare: int) -> RawOutputs:
    """One image, one foreground class: ``candidates`` disjoint boxes above the threshold with falling
    scores (two tied), then ``spare`` priors below it."""
    priors = candidates + spare
    x = (torch.arange(priors, dtype=torch.float32) % 10) / 10 + 0.05
    y = (torch.arange(priors, dtype=torch.float32) // 10) / 100 + 0.005
    boxes = torch.stack((x, y, torch.full_like(x, 0.04), torch.full_like(x, 0.004)), dim=1)
    score = torch.linspace(0.9, 0.2, priors)
    score[candidates:] = 0.01
    score[1] = score[2]  # a tie: the lower index ranks first
    conf = torch.stack((1 - score, score), dim=1)[None]
    coeffs = torch.linspace(-1, 1, priors * 4).view(1, priors, 4)
    return RawOutputs(torch.zeros(1, priors, 4), conf, coeffs, torch.rand(1, 6, 6, 4), boxes)


@pytest.mark.parametrize("candidates", [9, 10, 11, 40])
def test_more_candidates_than_top_k_are_cut_as_the_original_cuts_them(candidates):
    """top_k = 10 candidates per class enter NMS, in both paths and in the original (the brute force): at
    and past the boundary the surplus candidates are dropped, never a better one."""
    cfg = PostprocessConfig(top_k=10, max_detections=100, conf_threshold=0.05)
    raw = crowded_raw(candidates, spare=5)
    expected = brute_force_fast_nms(raw, 0, cfg)
    assert len(expected) == min(candidates, 10)  # disjoint boxes: NMS drops none
    dynamic, static = postprocess(raw, [(20, 20)], cfg), postprocess_static(raw, [(20, 20)], cfg)
    assert_same_detections(dynamic, static)
    assert static[0].scores.tolist() == pytest.approx([s for s, _, _ in expected], abs=0)
    assert torch.equal(static[0].boxes_relative[1], dynamic[0].boxes_relative[1])


def test_split_detections_refuses_a_wrong_number_of_sizes():
    raw = random_raw(1, batch=2, priors=20, classes=3)
    with pytest.raises(UsageError, match="3 image sizes for a batch of 2"):
        split_detections(postprocess_static_tensors(raw), [(5, 5), (5, 5), (5, 5)])


def test_statically_sized_full_masks_equal_the_dynamic_ones():
    """The CUDA graph's full-size masks (one resize of every slot, pixel boxes in the graph), on the CPU."""
    raw = random_raw(4, batch=3, priors=120, classes=4, proto=11)
    cfg = PostprocessConfig(max_detections=30)
    static = postprocess_static_tensors(raw, cfg, image_size=(37, 53))
    assert static.full_masks.shape == (3, 30, 37, 53) and static.pixel_boxes.shape == (3, 30, 4)
    assert_same_detections(postprocess(raw, [(37, 53)] * 3, cfg), split_detections(static, [(37, 53)] * 3, cfg))


# ---- real images through the shipped demo model


@pytest.fixture(scope="module")
def shapes_batches(tmp_path_factory):
    """The demo model's raw outputs on 40 generated shapes images (batches of 8), the first batch's last
    image replaced by a black frame."""
    paths = generate_dataset(tmp_path_factory.mktemp("shapes"), 0, 40, 256, seed=12345)
    images = [cv2.imread(str(p)) for p in sorted(paths["val_images"].glob("*.png"))]
    images[7] = np.zeros_like(images[7])
    model = load_model("yolact_shapes").eval()
    batches = []
    with torch.inference_mode():
        for start in range(0, len(images), 8):
            batch, sizes = preprocess(images[start : start + 8], model.config)
            batches.append((model(batch), sizes))
    return batches


@pytest.mark.parametrize("cfg", [PostprocessConfig(), PostprocessConfig(score_threshold=0.3)], ids=["all", "0.3"])
def test_static_equals_dynamic_on_real_images(shapes_batches, cfg):
    counts = []
    for raw, sizes in shapes_batches:
        dynamic = postprocess(raw, sizes, cfg)
        assert_same_detections(dynamic, postprocess_static(raw, sizes, cfg))
        counts += [len(d) for d in dynamic]
    assert sum(counts) > 100
    if cfg.score_threshold:
        assert counts[7] == 0  # the black frame: an image without detections
    else:
        assert max(counts) >= 30
