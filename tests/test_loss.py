"""Tests of the YOLACT training loss (matching, OHEM, mask and segmentation terms, normalisation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trt_yolact.model.boxes import encode, pairwise_iou, point_form
from trt_yolact.structures import TrainOutputs
from trt_yolact.training.loss import (
    LossConfig,
    Targets,
    YolactLoss,
    conf_loss,
    match,
    select_hard_negatives,
)

LN2 = math.log(2.0)


def center(*corners: tuple[float, float, float, float]) -> torch.Tensor:
    """Point-form boxes -> center-form priors."""
    b = torch.tensor(corners, dtype=torch.float32)
    return torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), dim=1)


# ------------------------------------------------------------------------------------------- matching

# Ground truth (point form): A (label 2 -> conf 3), B (label 0 -> conf 1), then the crowd box C.
GT_A = (0.0, 0.0, 0.5, 0.5)  # area 0.25
GT_B = (0.625, 0.625, 0.875, 0.875)  # area 0.0625
CROWD = (0.25, 0.0, 1.0, 0.5)
PRIORS = (
    (0.0, 0.0, 0.5, 0.5),  # p0: IoU(A) = 1 -> positive 3
    (0.0, 0.0, 0.5, 0.25),  # p1: IoU(A) = 0.125 / 0.25 = 0.5 -> positive (>= pos_threshold)
    (0.0, 0.0, 0.5, 7 / 32),  # p2: IoU(A) = (0.5 * 7/32) / 0.25 = 0.4375 -> neutral
    (0.5, 0.5, 1.0, 1.0),  # p3: IoU(B) = 0.0625 / 0.25 = 0.25, B's best prior -> forced positive 1
    (0.5, 0.0, 0.75, 0.25),  # p4: no overlap, 100% of its area in the crowd -> neutral
    (0.75, 0.25, 1.0, 0.75),  # p5: IoU(B) = 0.015625 / 0.171875 = 1/11; 50% in crowd -> background
    (0.25, 0.0, 0.5, 0.5),  # p6: IoU(A) = 0.125 / 0.25 = 0.5 -> positive; 100% in crowd but positive
    (0.0, 0.75, 0.25, 1.0),  # p7: nothing -> background
)


def hand_example():
    priors = center(*PRIORS)
    boxes = torch.tensor([GT_A, GT_B, CROWD])
    labels = torch.tensor([2, 0, 1])
    return priors, boxes, labels


def test_match_hand_computed_example():
    priors, boxes, labels = hand_example()
    loc, conf, matched = match(priors, boxes, labels, num_crowds=1, cfg=LossConfig())
    assert conf.dtype == torch.int64
    assert conf.tolist() == [3, 3, -1, 1, -1, 0, 3, 0]
    assert matched[[0, 1, 2, 6]].tolist() == [0, 0, 0, 0]
    assert matched[[3, 5]].tolist() == [1, 1]
    # The crowd box is never a match target.
    assert int(matched.max()) <= 1
    torch.testing.assert_close(loc, encode(boxes[matched], priors))
    # By hand: p0 is A exactly; p3 shares B's centre and is twice its size.
    torch.testing.assert_close(loc[0], torch.zeros(4))
    half = math.log(0.5) / 0.2
    torch.testing.assert_close(loc[3], torch.tensor([0.0, 0.0, half, half]))


def test_match_without_crowds_keeps_background():
    priors, boxes, labels = hand_example()
    _, conf, _ = match(priors, boxes[:2], labels[:2], num_crowds=0)
    assert conf.tolist() == [3, 3, -1, 1, 0, 0, 3, 0]


def test_match_thresholds_are_configurable():
    priors, boxes, labels = hand_example()
    _, conf, _ = match(priors, boxes, labels, 1, LossConfig(pos_threshold=0.6, neg_threshold=0.45))
    # p1 and p6 (IoU 0.5) become neutral, p2 (0.4375) background; crowd p4 still neutral.
    assert conf.tolist() == [3, -1, 0, 1, -1, 0, -1, 0]


def test_forced_match_resolves_conflicts_greedily():
    # q0 = (0,0,1,1) area 1, q1 = (0,0,0.5,1) area 0.5, q2 far away.
    # G1 = (0,0,1,0.5): IoU q0 = 0.5,  IoU q1 = 0.25 / 0.75 = 1/3
    # G2 = (0,0,0.75,1): IoU q0 = 0.75, IoU q1 = 0.5 / 0.75 = 2/3
    # Both want q0. The highest overlap (G2, q0) wins; G1 then takes q1 although q1's own best gt is
    # G2 at 2/3 (and G1's IoU there is only 1/3).
    priors = center((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 1.0), (0.9, 0.9, 1.0, 1.0))
    boxes = torch.tensor([(0.0, 0.0, 1.0, 0.5), (0.0, 0.0, 0.75, 1.0)])
    labels = torch.tensor([4, 7])
    _, conf, matched = match(priors, boxes, labels)
    assert matched[:2].tolist() == [1, 0]
    assert conf.tolist() == [8, 5, 0]


def reference_match(priors, boxes, labels, num_crowds, cfg):
    """Straightforward transcription of the original's matching loop, for comparison."""
    truths = boxes[: len(boxes) - num_crowds]
    overlaps = pairwise_iou(truths, point_form(priors))
    best_overlap, best_idx = overlaps.max(0)
    for _ in range(overlaps.shape[0]):
        row_best, row_arg = overlaps.max(1)
        j = int(row_best.argmax())
        i = int(row_arg[j])
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_overlap[i] = 2
        best_idx[i] = j
    conf = labels[: len(truths)][best_idx] + 1
    conf[best_overlap < cfg.pos_threshold] = -1
    conf[best_overlap < cfg.neg_threshold] = 0
    if num_crowds:
        crowd = pairwise_iou(point_form(priors), boxes[len(truths) :], crowd=True).max(1).values
        conf[(conf <= 0) & (crowd > cfg.crowd_iou_threshold)] = -1
    return encode(truths[best_idx], priors), conf, best_idx


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 0.7
    wh = torch.rand(n, 2, generator=generator) * 0.4 + 0.05
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize("seed", range(25))
def test_match_agrees_with_reference_loop(seed):
    g = torch.Generator().manual_seed(seed)
    num_priors = int(torch.randint(6, 30, (1,), generator=g))
    num_gt = int(torch.randint(1, 7, (1,), generator=g))
    num_crowds = int(torch.randint(0, 3, (1,), generator=g))
    # Priors on a coarse grid so several gts compete for the same prior.
    priors = center(*random_boxes(num_priors, g).mul(4).round().div(4).clamp(0, 1).tolist())
    priors[:, 2:] = priors[:, 2:].clamp(min=0.125)
    boxes = random_boxes(num_gt + num_crowds, g)
    labels = torch.randint(0, 5, (num_gt + num_crowds,), generator=g)
    cfg = LossConfig()
    got = match(priors, boxes, labels, num_crowds, cfg)
    want = reference_match(priors, boxes, labels, num_crowds, cfg)
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0])


def test_match_image_with_only_crowds_or_nothing():
    priors, boxes, labels = hand_example()
    loc, conf, matched = match(priors, boxes[2:], labels[2:], num_crowds=1)
    # Only background, except priors mostly inside the crowd (p4, p6) which are neutral.
    assert conf.tolist() == [0, 0, 0, 0, -1, 0, -1, 0]
    assert torch.all(loc == 0) and torch.all(matched == 0)
    _, conf, _ = match(priors, boxes[:0], labels[:0], num_crowds=0)
    assert torch.all(conf == 0)


# ----------------------------------------------------------------------------------------------- OHEM


def ohem_example():
    """One image, 16 priors, 3 classes. Background loss grows with the class-1 logit ``s``."""
    s = torch.tensor([50.0, 50.0, 3.0, 9.0, 1.0, 12.0, 0.5, 7.0, 2.0, 11.0, 4.0, 6.0, 8.0, 0.0, 5.0, 10.0])
    logits = torch.stack((torch.zeros(16), s, torch.zeros(16)), dim=1)[None]
    targets = torch.zeros(1, 16, dtype=torch.long)
    targets[0, 0] = 2  # positive (its background loss is huge but must not be ranked)
    targets[0, 1] = -1  # neutral (huge background loss, must be ignored)
    return logits, targets


def test_ohem_picks_the_hardest_negatives_at_three_to_one():
    logits, targets = ohem_example()
    neg = select_hard_negatives(logits, targets, negpos_ratio=3)
    # One positive -> three negatives: the largest s among the background priors are 12, 11, 10.
    assert torch.nonzero(neg[0]).flatten().tolist() == [5, 9, 15]
    neg = select_hard_negatives(logits, targets, negpos_ratio=5)
    assert sorted(torch.nonzero(neg[0]).flatten().tolist()) == [3, 5, 9, 12, 15]


def test_conf_loss_is_cross_entropy_over_positives_and_hard_negatives():
    logits, targets = ohem_example()
    keep = [0, 5, 9, 15]
    expected = F.cross_entropy(logits[0, keep], targets[0, keep], reduction="sum")
    torch.testing.assert_close(conf_loss(logits, targets, 3), expected)


def test_ohem_counts_per_image_and_never_uses_positives_or_neutrals():
    logits = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 3, -1, 0, 0, 0], [0, 0, 0, 0, -1, 0]])
    neg = select_hard_negatives(logits, targets, 3)
    # Image 0: 2 positives want 6 negatives but only 3 background priors exist; image 1 has none.
    assert neg[0].tolist() == [False, False, False, True, True, True]
    assert not neg[1].any()


# -------------------------------------------------------------------------------------- full loss setup

INPUT = 64
PROTO = 16
BOX_A = (0.0, 0.0, 0.5, 0.5)  # proto pixels [0, 8) x [0, 8), area 64
BOX_B = (0.5, 0.5, 0.875, 1.0)  # proto x [8, 14), y [8, 16), area 48


def mask_example(batch: int = 1):
    """Two objects (A, B) plus background priors; proto is 16x16 for a 64x64 input."""
    priors = center(BOX_A, BOX_B, (0.0, 0.75, 0.25, 1.0), (0.75, 0.0, 1.0, 0.25))
    masks = torch.zeros(2, INPUT, INPUT, dtype=torch.uint8)
    masks[0, 0:32, 0:32] = 1  # all of box A
    masks[1, 40:60, 36:52] = 1  # a part of box B (rows 10:15, cols 9:13 at proto size)
    targets = Targets(
        boxes=[torch.tensor([BOX_A, BOX_B])] * batch,
        labels=[torch.tensor([0, 1])] * batch,
        masks=[masks] * batch,
        num_crowds=[0] * batch,
    )
    return priors, targets, masks


def outputs_for(priors, batch, num_classes=3, k=3, proto=None, coeffs=None, segm=None):
    num_priors = priors.shape[0]
    g = torch.Generator().manual_seed(1)
    return TrainOutputs(
        loc=torch.randn(batch, num_priors, 4, generator=g),
        conf_logits=torch.randn(batch, num_priors, num_classes, generator=g),
        coeffs=coeffs if coeffs is not None else torch.zeros(batch, num_priors, k),
        proto=proto if proto is not None else torch.zeros(batch, PROTO, PROTO, k),
        priors=priors,
        segm=segm if segm is not None else torch.zeros(batch, num_classes - 1, 8, 8),
    )


def perfect_proto_and_coeffs(masks):
    """Prototype k = 100 * (downsampled gt mask k), prototype 2 = 50 everywhere (a bias).

    Coefficients (+1 on the object's prototype, -1 on the bias) give logits of +50 inside the gt mask
    and -50 outside, so the sigmoid saturates to the gt.
    """
    small = (F.interpolate(masks[None].float(), (PROTO, PROTO), mode="bilinear") > 0.5).float()[0]
    proto = torch.stack((100 * small[0], 100 * small[1], torch.full((PROTO, PROTO), 50.0)), dim=-1)
    coeffs = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    return proto[None], coeffs[None]


def test_mask_loss_vanishes_for_perfect_masks_and_grows_otherwise():
    priors, targets, masks = mask_example()
    proto, coeffs = perfect_proto_and_coeffs(masks)
    loss = YolactLoss()
    perfect = loss(outputs_for(priors, 1, proto=proto, coeffs=coeffs), targets)["mask"]
    assert 0 <= float(perfect) < 1e-4
    swapped = loss(outputs_for(priors, 1, proto=proto, coeffs=coeffs[:, [1, 0, 2, 3]]), targets)["mask"]
    assert float(swapped) > 1.0
    blank = loss(outputs_for(priors, 1, proto=proto, coeffs=torch.zeros_like(coeffs)), targets)["mask"]
    assert float(blank) > 1.0


def test_mask_loss_hand_computed_normalisation():
    # Zero prototypes -> sigmoid 0.5 inside the crop -> BCE = ln 2 per pixel, whatever the target.
    # The crop is the gt box padded by one proto pixel: A covers 9x9 = 81 pixels (area 64), B covers
    # 8x9 = 72 pixels (area 48). Outside the crop the prediction is 0 and so is the gt.
    # mask = mask_alpha * sum_m(BCE_m / area_m) / num_pos, num_pos = 2 per image.
    priors, targets, _ = mask_example(batch=2)
    out = YolactLoss()(outputs_for(priors, 2), targets)
    expected = 0.4 * 6.125 * (81 / 64 + 72 / 48) * LN2 / 2
    torch.testing.assert_close(out["mask"], torch.tensor(expected))


def test_mask_subset_is_rescaled_and_reproducible():
    priors, targets, _ = mask_example()
    loss = YolactLoss(LossConfig(masks_to_train=1))
    per_mask = {round(0.4 * 6.125 * 81 / 64 * LN2, 5), round(0.4 * 6.125 * 72 / 48 * LN2, 5)}
    seen = set()
    for seed in range(12):
        a = loss(outputs_for(priors, 1), targets, generator=torch.Generator().manual_seed(seed))["mask"]
        b = loss(outputs_for(priors, 1), targets, generator=torch.Generator().manual_seed(seed))["mask"]
        assert torch.equal(a, b)
        # One of the two masks, scaled by 2 / 1, divided by the 2 positives.
        seen.add(round(float(a), 5))
    assert seen == per_mask


def test_remove_empty_masks_only_drops_vanishing_masks():
    priors, targets, masks = mask_example()
    masks = masks.clone()
    masks[1] = 0
    masks[1, 40, 40] = 1  # one input pixel: nothing left at proto resolution
    targets = targets._replace(masks=[masks])
    alpha = 0.4 * 6.125
    kept = YolactLoss()(outputs_for(priors, 1), targets)
    torch.testing.assert_close(kept["mask"], torch.tensor(alpha * (81 / 64 + 72 / 48) * LN2 / 2))
    dropped = YolactLoss(LossConfig(mask_proto_remove_empty_masks=True))(outputs_for(priors, 1), targets)
    # B's prior leaves the mask term but still counts as a positive everywhere.
    torch.testing.assert_close(dropped["mask"], torch.tensor(alpha * 81 / 64 * LN2 / 2))
    torch.testing.assert_close(dropped["box"], kept["box"])


def test_box_and_conf_normalisation():
    priors, targets, _ = mask_example(batch=2)
    outputs = outputs_for(priors, 2)
    out = YolactLoss()(outputs, targets)
    # Priors 0 and 1 are exact matches (zero targets) and the two others are background; 4 positives.
    box = F.smooth_l1_loss(outputs.loc[:, :2], torch.zeros(2, 2, 4), reduction="sum") * 1.5 / 4
    torch.testing.assert_close(out["box"], box)
    conf_t = torch.tensor([[1, 2, 0, 0]] * 2)
    # 2 positives per image want 6 negatives; only the 2 background priors exist.
    conf = F.cross_entropy(outputs.conf_logits.reshape(-1, 3), conf_t.flatten(), reduction="sum") / 4
    torch.testing.assert_close(out["conf"], conf)
    torch.testing.assert_close(out["total"], out["box"] + out["conf"] + out["mask"] + out["segm"])


def test_semantic_segmentation_targets_union_per_class_and_skip_crowds():
    priors, _, _ = mask_example()
    masks = torch.zeros(4, INPUT, INPUT)
    masks[0, 0:16, 0:16] = 1  # class 1
    masks[1, 8:32, 8:32] = 1  # class 1 (overlaps the first)
    masks[2, 40:64, 0:24] = 1  # class 0
    masks[3, 32:64, 32:64] = 1  # crowd, class 2: ignored
    boxes = torch.tensor([(0, 0, 0.25, 0.25), (0.125, 0.125, 0.5, 0.5), (0, 0.625, 0.375, 1), (0.5, 0.5, 1, 1)])
    targets = Targets([boxes] * 2, [torch.tensor([1, 1, 0, 2])] * 2, [masks] * 2, [1, 1])
    # Expected targets at 8x8 (factor 8, blocks align with the masks).
    want = torch.zeros(3, 8, 8)
    want[1, 0:2, 0:2] = 1
    want[1, 1:4, 1:4] = 1
    want[0, 5:8, 0:3] = 1
    loss = YolactLoss()

    def segm_loss(logits):
        return loss(outputs_for(priors, 2, num_classes=4, segm=logits), targets)["segm"]

    good = segm_loss((40 * want - 20).expand(2, -1, -1, -1))
    assert 0 <= float(good) < 1e-6
    with_crowd = want.clone()
    with_crowd[2, 4:8, 4:8] = 1
    bad = segm_loss((40 * with_crowd - 20).expand(2, -1, -1, -1))
    assert float(bad) > 1.0
    # Zero logits: ln 2 for every element, summed, / (H3 * W3), averaged over the batch.
    zero = segm_loss(torch.zeros(2, 3, 8, 8))
    torch.testing.assert_close(zero, torch.tensor(3 * LN2))


# ---------------------------------------------------------------------------- robustness and gradients


def random_problem(seed: int = 0, batch: int = 3, num_classes: int = 4, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    xs = (torch.arange(6) + 0.5) / 6
    cx, cy = torch.meshgrid(xs, xs, indexing="xy")
    centers = torch.stack((cx.flatten(), cy.flatten()), dim=1)
    priors = torch.cat([torch.cat((centers, torch.full((36, 2), s)), dim=1) for s in (0.2, 0.4)])
    boxes, labels, masks, crowds = [], [], [], []
    for n, c in ((3, 1), (0, 0), (0, 1)):  # normal + crowd, empty image, only a crowd
        b = random_boxes(n + c, g)
        m = torch.zeros(n + c, INPUT, INPUT, dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate((b * INPUT).long().tolist()):
            m[j, y1 : y2 + 1, x1 : x2 + 1] = 1
        boxes.append(b)
        labels.append(torch.randint(0, num_classes - 1, (n + c,), generator=g))
        masks.append(m)
        crowds.append(c)
    targets = Targets(boxes[:batch], labels[:batch], masks[:batch], crowds[:batch])

    def param(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    outputs = TrainOutputs(
        loc=param(batch, 72, 4),
        conf_logits=param(batch, 72, num_classes),
        coeffs=param(batch, 72, k, scale=0.5),
        proto=param(batch, PROTO, PROTO, k),
        priors=priors,
        segm=param(batch, num_classes - 1, 8, 8),
    )
    return outputs, targets


def test_losses_are_finite_and_gradients_flow():
    outputs, targets = random_problem()
    losses = YolactLoss()(outputs, targets)
    assert set(losses) == {"box", "conf", "mask", "segm", "total"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
        assert float(value.detach()) > 0, name
    losses["total"].backward()
    for name in ("loc", "conf_logits", "coeffs", "proto", "segm"):
        grad = getattr(outputs, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_batch_without_any_object_is_finite():
    priors, _, _ = mask_example()
    targets = Targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, INPUT, INPUT)], [0])
    out = YolactLoss()(outputs_for(priors, 1), targets)
    assert all(torch.isfinite(v) for v in out.values())
    assert float(out["box"]) == 0 and float(out["mask"]) == 0 and float(out["conf"]) == 0


def test_targets_may_be_dicts():
    priors, targets, _ = mask_example(batch=2)
    outputs = outputs_for(priors, 2)
    loss = YolactLoss()
    want = loss(outputs, targets)["total"]
    as_dict = loss(outputs, targets._asdict())["total"]
    per_image = [{"boxes": b, "labels": lab, "masks": m, "num_crowds": c} for b, lab, m, c in zip(*targets)]
    torch.testing.assert_close(as_dict, want)
    torch.testing.assert_close(loss(outputs, per_image)["total"], want)


def test_sgd_on_free_outputs_reduces_the_loss():
    torch.manual_seed(0)
    outputs, targets = random_problem(seed=3, batch=1)
    params = [outputs.loc, outputs.conf_logits, outputs.coeffs, outputs.proto, outputs.segm]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    loss = YolactLoss()
    history = []
    for step in range(50):
        optimizer.zero_grad()
        losses = loss(outputs, targets, generator=torch.Generator().manual_seed(step))
        losses["total"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert history[-1]["total"] < 0.5 * history[0]["total"]
    for term in ("box", "conf", "mask", "segm"):
        assert history[-1][term] < history[0][term], term
