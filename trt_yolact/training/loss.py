"""The YOLACT training loss: prior matching, box, OHEM confidence, lincomb mask and segmentation terms.

Behaviour follows the original YOLACT (``yolact_base`` settings): SSD-style prior matching with forced
best-prior matches and COCO crowd handling, Smooth-L1 box regression, online hard negative mining at 3:1
for the class confidences, a per-prior mask loss on the linear combination of prototypes (cropped to the
matched ground-truth box and normalised by its area) and a per-class BCE on the P3 segmentation logits.

As in the original, the box, confidence and mask terms are divided by the number of positive priors in
the whole batch and the segmentation term by the batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.boxes import center_size, crop_masks, encode, pairwise_iou, point_form
from ..structures import TrainOutputs

# Conf-target values besides class ids (``label + 1``).
BACKGROUND = 0
NEUTRAL = -1


@dataclass(frozen=True)
class LossConfig:
    """Loss hyper-parameters; the defaults are those of the original ``yolact_base``."""

    pos_threshold: float = 0.5
    neg_threshold: float = 0.4
    negpos_ratio: int = 3
    bbox_alpha: float = 1.5
    conf_alpha: float = 1.0
    mask_alpha: float = 0.4 * 6.125
    semantic_segmentation_alpha: float = 1.0
    # At most this many positive priors per image train the mask (a random subset when there are more).
    masks_to_train: int = 100
    # Background priors whose area lies more than this fraction inside a crowd box are ignored.
    crowd_iou_threshold: float = 0.7
    # Divide each mask's summed BCE by its ground-truth box area in prototype pixels.
    mask_proto_normalize_emulate_roi_pooling: bool = True
    # Zero predicted masks outside the matched ground-truth box before the BCE.
    mask_proto_crop: bool = True
    # Drop positives whose ground-truth mask vanishes at prototype resolution (mask term only).
    mask_proto_remove_empty_masks: bool = False
    # Threshold the bilinearly downsampled ground-truth masks at 0.5.
    mask_proto_binarize_downsampled_gt: bool = True


class Targets(NamedTuple):
    """Ground truth of a batch, one entry per image.

    Crowd annotations are the *last* ``num_crowds[i]`` entries of ``boxes[i]``, ``labels[i]`` and
    ``masks[i]``.
    """

    boxes: Sequence[Tensor]  # [N, 4] point form (x1, y1, x2, y2) relative to the input size
    labels: Sequence[Tensor]  # [N] int64, 0-based class ids without background
    masks: Sequence[Tensor]  # [N, H, W] at network-input resolution, 0/1 (uint8, bool or float)
    num_crowds: Sequence[int]


def as_targets(targets: Any) -> Targets:
    """Accept :class:`Targets`, a mapping of per-image lists, or a sequence of per-image mappings."""
    if isinstance(targets, Targets):
        return targets
    if isinstance(targets, Mapping):
        return Targets(targets["boxes"], targets["labels"], targets["masks"], targets["num_crowds"])
    if isinstance(targets, Sequence) and all(isinstance(t, Mapping) for t in targets):
        return Targets(
            [t["boxes"] for t in targets],
            [t["labels"] for t in targets],
            [t["masks"] for t in targets],
            [int(t.get("num_crowds", 0)) for t in targets],
        )
    raise TypeError(f"cannot interpret {type(targets).__name__} as loss targets")


# --------------------------------------------------------------------------------------------- matching


def _force_best_priors(overlaps: Tensor) -> tuple[Tensor, Tensor]:
    """Give every ground truth the prior it overlaps most, each prior going to at most one of them.

    Greedy, as the original: repeatedly take the largest remaining (gt, prior) overlap, assign that
    prior to that gt, then retire both the gt and the prior. Returns ``(prior_index, gt_index)``.
    Per-gt row maxima are kept and only recomputed for rows whose best prior was just taken.
    """
    overlaps = overlaps.clone()
    num_gts, num_priors = overlaps.shape
    row_best, row_arg = overlaps.max(dim=1)
    active = torch.ones(num_gts, dtype=torch.bool, device=overlaps.device)
    retired = torch.finfo(overlaps.dtype).min
    prior_index, gt_index = [], []
    for _ in range(min(num_gts, num_priors)):
        gt = int(torch.where(active, row_best, retired).argmax())
        prior = row_arg[gt]
        prior_index.append(prior)
        gt_index.append(gt)
        active[gt] = False
        overlaps[:, prior] = -1.0
        stale = active & (row_arg == prior)
        if bool(stale.any()):
            row_best[stale], row_arg[stale] = overlaps[stale].max(dim=1)
    device = overlaps.device
    return (
        torch.stack(prior_index) if prior_index else torch.zeros(0, dtype=torch.long, device=device),
        torch.tensor(gt_index, dtype=torch.long, device=device),
    )


def match(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_crowds: int = 0,
    cfg: LossConfig = LossConfig(),
) -> tuple[Tensor, Tensor, Tensor]:
    """Assign ground truth to the priors of one image.

    ``priors [P, 4]`` center form; ``gt_boxes [N, 4]`` point form and ``gt_labels [N]`` (0-based), whose
    last ``num_crowds`` entries are crowds. Returns ``loc_targets [P, 4]`` (encoded matched boxes),
    ``conf_targets [P]`` int64 (``label + 1`` positive, 0 background, -1 neutral) and
    ``matched_gt_index [P]`` (index of each prior's matched non-crowd gt; 0 when the image has none).
    """
    num_priors = priors.shape[0]
    num_objects = gt_boxes.shape[0] - num_crowds
    prior_boxes = point_form(priors)

    if num_objects > 0:
        boxes = gt_boxes[:num_objects]
        overlaps = pairwise_iou(boxes, prior_boxes)  # [N, P]
        best_overlap, matched = overlaps.max(dim=0)
        forced_priors, forced_gts = _force_best_priors(overlaps)
        best_overlap[forced_priors] = 2.0  # never thresholded away
        matched[forced_priors] = forced_gts
        conf = gt_labels[:num_objects].long()[matched] + 1
        conf[best_overlap < cfg.pos_threshold] = NEUTRAL
        conf[best_overlap < cfg.neg_threshold] = BACKGROUND
        loc = encode(boxes[matched], priors)
    else:
        matched = torch.zeros(num_priors, dtype=torch.long, device=priors.device)
        conf = torch.full((num_priors,), BACKGROUND, dtype=torch.long, device=priors.device)
        loc = priors.new_zeros(num_priors, 4)

    if num_crowds > 0 and cfg.crowd_iou_threshold < 1:
        # Fraction of each prior's area inside its most-covering crowd box.
        crowd_cover = pairwise_iou(prior_boxes, gt_boxes[num_objects:], crowd=True).max(dim=1).values
        conf[(conf <= 0) & (crowd_cover > cfg.crowd_iou_threshold)] = NEUTRAL
    return loc, conf, matched


# ------------------------------------------------------------------------------------------ loss terms


def box_loss(loc: Tensor, loc_targets: Tensor, positive: Tensor) -> Tensor:
    """Smooth-L1 (summed) between predicted and target offsets of the positive priors."""
    return F.smooth_l1_loss(loc[positive], loc_targets[positive], reduction="sum")


def select_hard_negatives(conf_logits: Tensor, conf_targets: Tensor, negpos_ratio: int) -> Tensor:
    """OHEM: per image, the ``min(negpos_ratio * num_pos, P - 1)`` background priors that are hardest.

    Hardness is the background loss ``logsumexp(conf) - conf[0]``; positives and neutrals never count.
    Returns a boolean mask ``[B, P]``.
    """
    positive = conf_targets > 0
    candidate = conf_targets == BACKGROUND
    with torch.no_grad():
        background_loss = torch.logsumexp(conf_logits, dim=-1) - conf_logits[..., 0]
        background_loss = background_loss.masked_fill(~candidate, 0.0)
        order = background_loss.argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)
        num_neg = (negpos_ratio * positive.sum(dim=1, keepdim=True)).clamp(max=conf_targets.shape[1] - 1)
    return (rank < num_neg) & candidate


def conf_loss(conf_logits: Tensor, conf_targets: Tensor, negpos_ratio: int) -> Tensor:
    """Cross-entropy (summed) over the positives and the hard negatives."""
    keep = (conf_targets > 0) | select_hard_negatives(conf_logits, conf_targets, negpos_ratio)
    return F.cross_entropy(conf_logits[keep], conf_targets[keep], reduction="sum")


def downsample_masks(masks: Tensor, size: tuple[int, int], binarize: bool = True) -> Tensor:
    """``[N, H, W]`` masks -> ``[N, h, w]`` float, bilinear (align_corners=False), optionally ``> 0.5``."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    small = F.interpolate(masks[None].float(), size, mode="bilinear", align_corners=False)[0]
    return (small > 0.5).float() if binarize else small


def image_mask_loss(
    proto: Tensor,
    coeffs: Tensor,
    gt_index: Tensor,
    gt_boxes: Tensor,
    gt_masks: Tensor,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unscaled lincomb mask loss of one image's positive priors.

    ``proto [H', W', K]``; ``coeffs [n, K]`` and ``gt_index [n]`` are the positives' coefficients and
    matched gt; ``gt_boxes [N, 4]`` and ``gt_masks [N, H, W]`` are the image's non-crowd ground truth.
    Returns the sum over masks of the per-pixel BCE, each normalised by its box area when configured,
    scaled up by ``n / masks_to_train`` when only a random subset is trained.
    """
    mask_h, mask_w = proto.shape[0], proto.shape[1]
    with torch.no_grad():
        small = downsample_masks(gt_masks, (mask_h, mask_w), cfg.mask_proto_binarize_downsampled_gt)
        if cfg.mask_proto_remove_empty_masks:
            keep = small.sum(dim=(1, 2))[gt_index] > 1e-4
            coeffs, gt_index = coeffs[keep], gt_index[keep]

    num_masks = coeffs.shape[0]
    if num_masks == 0:
        return proto.new_zeros(())
    if num_masks > cfg.masks_to_train:
        device = generator.device if generator is not None else torch.device("cpu")
        select = torch.randperm(num_masks, generator=generator, device=device)[: cfg.masks_to_train]
        select = select.to(coeffs.device)
        coeffs, gt_index = coeffs[select], gt_index[select]
    boxes, targets = gt_boxes[gt_index], small[gt_index].permute(1, 2, 0)  # [n, 4], [H', W', n]

    pred = torch.sigmoid(proto @ coeffs.t()).float()  # [H', W', n]
    if cfg.mask_proto_crop:
        pred = crop_masks(pred, boxes)
    per_mask = F.binary_cross_entropy(pred.clamp(0, 1), targets, reduction="none").sum(dim=(0, 1))
    if cfg.mask_proto_normalize_emulate_roi_pooling:
        sizes = center_size(boxes)
        box_area = (sizes[:, 2] * mask_w) * (sizes[:, 3] * mask_h)
        per_mask = per_mask / box_area * (mask_h * mask_w if cfg.mask_proto_crop else 1)
    return per_mask.sum() * (num_masks / coeffs.shape[0])


def semantic_segmentation_loss(segm: Tensor, labels: Sequence[Tensor], masks: Sequence[Tensor]) -> Tensor:
    """BCE-with-logits (summed per image, divided by ``H3 * W3``) against per-class mask unions.

    ``segm [B, C-1, H3, W3]``; ``labels[i] [N]`` and ``masks[i] [N, H, W]`` without crowds.
    """
    _, num_classes, height, width = segm.shape
    total = segm.new_zeros(())
    for logits, image_labels, image_masks in zip(segm, labels, masks):
        with torch.no_grad():
            small = downsample_masks(image_masks, (height, width)).to(logits.dtype)
            target = logits.new_zeros(num_classes, height * width)
            index = image_labels.long()[:, None].expand(-1, height * width)
            target.scatter_reduce_(0, index, small.flatten(1), reduce="amax")
        total = total + F.binary_cross_entropy_with_logits(logits, target.view_as(logits), reduction="sum")
    return total / (height * width)


# -------------------------------------------------------------------------------------------- the loss


class YolactLoss(nn.Module):
    """``YolactLoss(cfg)(outputs, targets) -> {"box", "conf", "mask", "segm", "total"}``."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()

    def forward(
        self, outputs: TrainOutputs, targets: Any, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        targets = as_targets(targets)
        device = outputs.loc.device
        batch_size = outputs.loc.shape[0]
        if len(targets.boxes) != batch_size:
            raise ValueError(f"{len(targets.boxes)} target images for a batch of {batch_size}")

        priors = outputs.priors.to(device)
        loc_t, conf_t, boxes, labels, masks, matched_index = [], [], [], [], [], []
        for i in range(batch_size):
            num_objects = targets.boxes[i].shape[0] - int(targets.num_crowds[i])
            image_boxes = targets.boxes[i].to(device=device, dtype=priors.dtype)
            image_labels = targets.labels[i].to(device=device, dtype=torch.long)
            loc, conf, matched = match(priors, image_boxes, image_labels, int(targets.num_crowds[i]), cfg)
            loc_t.append(loc)
            conf_t.append(conf)
            boxes.append(image_boxes[:num_objects])
            labels.append(image_labels[:num_objects])
            masks.append(targets.masks[i][:num_objects].to(device))
            matched_index.append(matched)
        loc_targets, conf_targets = torch.stack(loc_t), torch.stack(conf_t)
        positive = conf_targets > 0
        num_pos = positive.sum().clamp(min=1).to(outputs.loc.dtype)

        mask_total = outputs.proto.new_zeros(())
        for i in range(batch_size):
            pos = positive[i]
            coeffs, gt_index = outputs.coeffs[i][pos], matched_index[i][pos]
            mask_total = mask_total + image_mask_loss(
                outputs.proto[i], coeffs, gt_index, boxes[i], masks[i], cfg, generator
            )
        proto_h, proto_w = outputs.proto.shape[1], outputs.proto.shape[2]

        losses = {
            "box": box_loss(outputs.loc, loc_targets, positive) * cfg.bbox_alpha / num_pos,
            "conf": conf_loss(outputs.conf_logits, conf_targets, cfg.negpos_ratio) * cfg.conf_alpha / num_pos,
            "mask": mask_total * cfg.mask_alpha / (proto_h * proto_w) / num_pos,
            "segm": semantic_segmentation_loss(outputs.segm, labels, masks)
            * cfg.semantic_segmentation_alpha
            / batch_size,
        }
        losses["total"] = losses["box"] + losses["conf"] + losses["mask"] + losses["segm"]
        return losses
