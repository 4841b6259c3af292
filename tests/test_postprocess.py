"""Batched post-processing: Fast NMS against a brute-force reference, batch == singles, options."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from trt_yolact.config import PostprocessConfig
from trt_yolact.inference.postprocess import postprocess, select_detections
from trt_yolact.inference.preprocess import preprocess
from trt_yolact.model.boxes import decode, pairwise_iou
from trt_yolact.structures import RawOutputs


def random_raw(seed: int, batch: int, priors: int, classes: int, proto: int = 8, k: int = 4) -> RawOutputs:
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(priors, 2, generator=g)
    sizes = torch.rand(priors, 1, generator=g) * 0.3 + 0.05
    return RawOutputs(
        loc=torch.randn(batch, priors, 4, generator=g) * 0.5,
        conf=torch.softmax(torch.randn(batch, priors, classes, generator=g) * 3, dim=-1),
        coeffs=torch.tanh(torch.randn(batch, priors, k, generator=g)),
        proto=torch.relu(torch.randn(batch, proto, proto, k, generator=g)),
        priors=torch.cat([centers, sizes, sizes], dim=1),
    )


def brute_force_fast_nms(raw: RawOutputs, b: int, cfg: PostprocessConfig):
    """Per-class Fast NMS written out with plain loops, as the original defines it."""
    boxes = decode(raw.loc[b], raw.priors).numpy().astype(np.float64)
    conf = raw.conf[b, :, 1:].numpy()
    candidates = [p for p in range(conf.shape[0]) if conf[p].max() > cfg.conf_threshold]
    kept = []  # (score, class, prior), in class-major order
    for c in range(conf.shape[1]):
        ranked = sorted(candidates, key=lambda p: -conf[p, c])[: cfg.top_k]
        for j, pj in enumerate(ranked):
            suppressed = False
            for pi in ranked[:j]:
                a, bb = boxes[pi], boxes[pj]
                iw = max(0.0, min(a[2], bb[2]) - max(a[0], bb[0]))
                ih = max(0.0, min(a[3], bb[3]) - max(a[1], bb[1]))
                inter = iw * ih
                union = (a[2] - a[0]) * (a[3] - a[1]) + (bb[2] - bb[0]) * (bb[3] - bb[1]) - inter
                if inter / union > cfg.nms_threshold:
                    suppressed = True
                    break
            if not suppressed:
                kept.append((float(conf[pj, c]), c, pj))
    kept = sorted(kept, key=lambda t: -t[0])[: cfg.max_detections]
    return kept


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    priors=st.integers(1, 40),
    classes=st.integers(2, 5),
    top_k=st.integers(1, 12),
    max_dets=st.integers(1, 20),
    nms=st.sampled_from([0.3, 0.5, 0.7]),
)
def test_fast_nms_matches_brute_force(seed, priors, classes, top_k, max_dets, nms):
    raw = random_raw(seed, batch=2, priors=priors, classes=classes)
    cfg = PostprocessConfig(conf_threshold=0.3, top_k=top_k, max_detections=max_dets, nms_threshold=nms)
    selected = select_detections(raw, cfg)
    for b in range(2):
        expected = brute_force_fast_nms(raw, b, cfg)
        n = int(selected.num_detections[b])
        assert n == len(expected)
        assert selected.classes[b, :n].tolist() == [c for _, c, _ in expected]
        np.testing.assert_allclose(selected.scores[b, :n].numpy(), [s for s, _, _ in expected], rtol=0, atol=1e-7)
        expected_boxes = decode(raw.loc[b], raw.priors)[[p for _, _, p in expected]]
        assert torch.equal(selected.boxes[b, :n], expected_boxes.reshape(-1, 4))


def test_cross_class_nms_keeps_one_box_per_cluster():
    # Two identical boxes with different best classes: cross-class NMS keeps one, per-class keeps both.
    loc = torch.zeros(1, 2, 4)
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    conf = torch.tensor([[[0.1, 0.8, 0.1], [0.1, 0.2, 0.7]]])
    raw = RawOutputs(loc, conf, torch.zeros(1, 2, 4), torch.zeros(1, 4, 4, 4), priors)
    per_class = select_detections(raw, PostprocessConfig())
    cross = select_detections(raw, PostprocessConfig(cross_class_nms=True))
    assert int(cross.num_detections[0]) == 1 and cross.classes[0, 0].item() == 0
    assert int(per_class.num_detections[0]) >= 2


def test_batch_equals_single_image_calls():
    raw = random_raw(7, batch=4, priors=60, classes=4, proto=10)
    sizes = [(40, 50), (33, 17), (40, 50), (64, 64)]
    together = postprocess(raw, sizes)
    for b, size in enumerate(sizes):
        single_raw = RawOutputs(
            raw.loc[b : b + 1], raw.conf[b : b + 1], raw.coeffs[b : b + 1], raw.proto[b : b + 1], raw.priors
        )
        (single,) = postprocess(single_raw, [size])
        assert torch.equal(together[b].classes, single.classes)
        assert torch.equal(together[b].boxes, single.boxes)
        torch.testing.assert_close(together[b].scores, single.scores, rtol=0, atol=0)
        assert together[b].masks.shape == (len(single), *size)
        mismatch = (together[b].masks != single.masks).float().mean().item()
        assert mismatch < 1e-3  # matmul blocking may move a pixel right at 0.5


def test_batch_of_real_images_equals_singles(reference_dir, fixture_model):
    images = [cv2.imread(str(reference_dir / n)) for n in ("chelsea.png", "shapes.png")]
    images.append(cv2.flip(images[0], 1))
    with torch.no_grad():
        batch, sizes = preprocess(images, fixture_model.config)
        together = postprocess(fixture_model(batch), sizes)
        for image, dets in zip(images, together):
            single_batch, single_sizes = preprocess([image], fixture_model.config)
            (single,) = postprocess(fixture_model(single_batch), single_sizes)
            assert dets.classes.tolist() == single.classes.tolist()
            assert torch.equal(dets.boxes, single.boxes)
            assert (dets.masks != single.masks).float().mean().item() < 1e-3


def test_empty_detections_are_a_normal_result():
    raw = random_raw(3, batch=2, priors=20, classes=3)
    for cfg in (PostprocessConfig(conf_threshold=1.0), PostprocessConfig(score_threshold=1.0)):
        results = postprocess(raw, [(30, 40), (20, 10)], cfg)
        assert [len(r) for r in results] == [0, 0]
        assert results[0].masks.shape == (0, 30, 40) and results[0].boxes.shape == (0, 4)


def test_score_threshold_and_low_resolution_masks():
    raw = random_raw(5, batch=1, priors=50, classes=3, proto=12)
    full = postprocess(raw, [(48, 48)])[0]
    filtered = postprocess(raw, [(48, 48)], PostprocessConfig(score_threshold=0.5))[0]
    assert len(filtered) == int((full.scores > 0.5).sum())
    assert torch.equal(filtered.classes, full.classes[: len(filtered)])
    low = postprocess(raw, [(48, 48)], PostprocessConfig(full_resolution_masks=False))[0]
    assert low.masks.shape == (len(full), 12, 12) and low.masks.dtype == torch.float32
    assert float(low.masks.min()) >= 0 and float(low.masks.max()) <= 1


def test_pairwise_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou = pairwise_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    torch.testing.assert_close(pairwise_iou(a, b, crowd=True), torch.tensor([[0.25, 1.0, 0.0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_code_on_cuda():
    raw = random_raw(11, batch=2, priors=80, classes=5)
    cpu = postprocess(raw, [(30, 30), (30, 30)])
    gpu = postprocess(RawOutputs(*(t.cuda() for t in raw)), [(30, 30), (30, 30)])
    for a, b in zip(cpu, gpu):
        assert a.classes.tolist() == b.classes.cpu().tolist()
        torch.testing.assert_close(a.scores, b.scores.cpu())
        # Same code on both devices; matmul and sigmoid may round differently, which flips pixels near 0.5.
        assert a.masks.shape == b.masks.shape
        assert (a.masks != b.masks.cpu()).float().mean() <= 1e-3


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0, -1.0]), min_size=1, max_size=40),
    k=st.integers(1, 40),
)
def test_stable_topk_equals_a_stable_sort(values, k):
    from trt_yolact.inference.postprocess import stable_topk

    scores = torch.tensor([values, values[::-1]])
    k = min(k, len(values))
    expected_values, expected_index = torch.sort(scores, dim=-1, descending=True, stable=True)
    got_values, got_index = stable_topk(scores, k)
    assert torch.equal(got_values, expected_values[:, :k])
    assert torch.equal(got_index, expected_index[:, :k])


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("sizes", [[(61, 83), (40, 29)], [(12, 9), (61, 83)]], ids=["up", "down"])
def test_windowed_upsampling_equals_interpolate(crop, sizes):
    """Full-resolution masks are computed only where they can be non-zero; the result must be what
    F.interpolate of the whole low-resolution mask gives, images smaller than the prototypes included."""
    raw = random_raw(13, batch=2, priors=80, classes=4, proto=17)
    cfg = PostprocessConfig(crop_masks=crop)
    low = postprocess(raw, sizes, PostprocessConfig(crop_masks=crop, full_resolution_masks=False))
    full = postprocess(raw, sizes, cfg)
    for lo, hi in zip(low, full):
        reference = F.interpolate(lo.masks[None], hi.image_size, mode="bilinear", align_corners=False)[0] > 0.5
        assert torch.equal(hi.masks, reference)


@pytest.mark.parametrize("size", [(57, 70), (61, 44), (17, 19), (200, 171)])
def test_windows_skip_only_pixels_that_cannot_pass_half(size, monkeypatch):
    """Windows are drawn around the cells that may reach 0.5: on masks whose values crowd around 0.5 (a few
    ulps either side, exactly 0.5, the window threshold itself and the value below it), the result must
    equal the same arithmetic over the whole image."""
    from trt_yolact.inference import postprocess as module

    generator = torch.Generator().manual_seed(11)
    half = torch.tensor(0.5)
    steps = torch.randint(-40, 41, (2, 7, 17, 19), generator=generator)
    towards = torch.where(steps < 0, 0.0, 1.0)
    masks = torch.nextafter(half.expand_as(steps), towards)
    for ulps in range(2, 5):
        masks = torch.where(steps.abs() >= ulps * 10, torch.nextafter(masks, towards), masks)
    masks = torch.where(steps == 0, half, masks)
    sparse = torch.rand(masks.shape, generator=generator) < 0.8  # most cells far below, as around an object
    masks = torch.where(sparse, torch.rand(masks.shape, generator=generator) * 0.4, masks)
    masks[0, 0] = module._MAY_REACH_HALF
    masks[0, 1] = torch.nextafter(torch.tensor(module._MAY_REACH_HALF), torch.tensor(0.0))
    counts = [7, 5]
    windowed = module._upsample_group(masks, [0, 1], counts, *size)
    monkeypatch.setattr(module, "_MAY_REACH_HALF", -1.0)  # every cell may: windows cover the image
    whole = module._upsample_group(masks, [0, 1], counts, *size)
    reference = F.interpolate(masks, size=size, mode="bilinear", align_corners=False) > 0.5
    for b in (0, 1):
        assert torch.equal(windowed[b], whole[b])
        # F.interpolate itself rounds differently by an ulp now and then: at most where a value is that close.
        assert (windowed[b] != reference[b, : counts[b]]).float().mean() < 1e-3
    assert any(windowed[b].any() for b in (0, 1))


@pytest.mark.parametrize("crop", [True, False])
def test_gpu_upsampling_path_equals_the_windowed_path(crop):
    """CUDA takes one resize per image instead of the windowed path; run here on the CPU, where both use
    PyTorch's CPU arithmetic, they must agree exactly, images without detections included."""
    from trt_yolact.inference.postprocess import _upsample_group, _upsample_whole
    from trt_yolact.model.boxes import box_window

    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(3, 6, 17, 19, generator=generator)
    xy = torch.rand(3, 6, 2, generator=generator) * 0.6
    boxes = torch.cat((xy, xy + 0.1 + torch.rand(3, 6, 2, generator=generator) * 0.3), dim=-1)
    if crop:
        masks = masks * box_window(boxes, 17, 19)
    counts, members = [4, 0, 6], [0, 1, 2]
    windowed = _upsample_group(masks, members, counts, 57, 70)
    whole = _upsample_whole(masks, members, counts, 57, 70)
    assert sorted(whole) == members
    for b in members:
        assert whole[b].shape == (counts[b], 57, 70) and whole[b].dtype == torch.bool
        assert torch.equal(whole[b], windowed[b])
    assert whole[0].any()
