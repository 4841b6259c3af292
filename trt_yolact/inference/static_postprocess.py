"""Post-processing with static shapes: the detections of :mod:`.postprocess`, with no host synchronisation
and no data-dependent shape, so that it can be captured in a CUDA graph with the forward pass.

Fixed sizes replace the dynamic path's compaction: every prior enters the per-class top-k (non-candidates
rank after every candidate, so they never suppress one and are never kept), Fast NMS runs on a fixed
``[B, C, top_k, top_k]`` IoU matrix, and ``D = min(max_detections, C * top_k)`` output slots per image carry
a validity mask instead of being cut to the real count. The fixed candidate count is the original's own
``top_k`` per class, so an image with more candidates than that is truncated exactly as the original and
the dynamic path truncate it: the detections are the same, image for image.

The stable top-k (ties: lower index first, as a stable sort orders them) is one ``torch.topk`` on unique
int64 keys: the score's bits above the index. Non-negative floats order like their bit patterns, and the
scores are probabilities (softmax outputs), so no sort of the full prior axis is needed.

:class:`~trt_yolact.deploy.onnx_postprocess.GraphPostprocess` is the same computation restricted to ONNX
operators, for export; this module is the eager and CUDA-graph form, built from the dynamic path's own
kernels (chunked in-place IoU, the same mask product), so that its numbers equal that path's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PostprocessConfig
from ..errors import UsageError
from ..model.boxes import box_window_factors, decode, sanitize_coordinates
from ..structures import Detections, RawOutputs, SelectedDetections
from .mask_memory import MaskMemory
from .postprocess import _gather_rows, fast_nms_keep, flatten_classes, upsample_masks

_LOW_BITS = 0xFFFFFFFF


def stable_topk_where(scores: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[..., k]`` of the ``k`` best valid entries of non-negative ``scores`` along the last axis,
    best first, ties by the lower index, then the invalid entries in index order; and their validity.

    Equal to a stable descending sort of ``scores`` with invalid entries set below every score, cut at
    ``k``, without the sort: the keys ``(bits(score) + 1) << 32 | (n - 1 - index)`` (0 in the high half when
    invalid) are unique and order like that sort.
    """
    n = scores.shape[-1]
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64) + 1  # + 0.0: -0.0 becomes +0.0
    high = torch.where(valid, bits, torch.zeros((), dtype=torch.int64, device=scores.device))
    reverse_index = torch.arange(n - 1, -1, -1, device=scores.device, dtype=torch.int64)
    keys = torch.topk(high.bitwise_left_shift_(32).bitwise_or_(reverse_index), k, dim=-1, sorted=True).values
    return (n - 1) - keys.bitwise_and(_LOW_BITS), keys >= (1 << 32)


def _per_class(boxes: torch.Tensor, scores: torch.Tensor, candidate: torch.Tensor, cfg: PostprocessConfig):
    """Per-class Fast NMS over fixed ``top_k`` slots: flat class-major ``(scores, classes, priors, keep)``,
    each ``[B, C * K]``."""
    class_scores = scores.transpose(1, 2)  # [B, C, P]
    k = min(cfg.top_k, class_scores.shape[-1])
    order, valid = stable_topk_where(class_scores, candidate[:, None, :].expand_as(class_scores), k)
    sorted_scores = torch.gather(class_scores, -1, order)
    keep = fast_nms_keep(_gather_rows(boxes, order), cfg.nms_threshold) & valid
    return flatten_classes(sorted_scores, order, keep)


def _cross_class(boxes: torch.Tensor, scores: torch.Tensor, candidate: torch.Tensor, cfg: PostprocessConfig):
    """Fast NMS over all classes at once (each prior with its best class), over fixed ``top_k`` slots."""
    best_scores, best_classes = scores.max(dim=-1)  # [B, P]
    order, valid = stable_topk_where(best_scores, candidate, min(cfg.top_k, best_scores.shape[-1]))
    keep = fast_nms_keep(_gather_rows(boxes, order), cfg.nms_threshold) & valid
    return torch.gather(best_scores, 1, order), torch.gather(best_classes, 1, order), order, keep


@dataclass
class StaticDetections:
    """The fixed-size detections of a batch: ``D`` slots per image, the real ones first (``valid``).

    Empty slots hold a zero box, score 0, class -1, zero coefficients and an all-zero mask.
    """

    selected: SelectedDetections  # boxes [B,D,4] relative, scores [B,D], classes [B,D], coeffs, num_detections
    valid: torch.Tensor  # [B, D] bool
    masks: torch.Tensor  # [B, D, H', W'] float probabilities (cropped), zero in empty slots
    full_masks: torch.Tensor | None = None  # [B, D, H, W] bool at the one image size, where computed statically
    pixel_boxes: torch.Tensor | None = None  # [B, D, 4] int64 at the one image size, where computed statically


def select_static(
    raw: RawOutputs, cfg: PostprocessConfig = PostprocessConfig()
) -> tuple[SelectedDetections, torch.Tensor]:
    """Decode, threshold, Fast NMS and the best ``max_detections`` per image, with fixed shapes.

    Returns the detections padded to ``D = min(max_detections, C * top_k)`` slots and the ``[B, D]``
    validity mask; the real slots equal :func:`.postprocess.select_detections`'s, in the same order."""
    if cfg.top_k < 1 or cfg.max_detections < 1:
        raise UsageError(f"top_k and max_detections must be at least 1, got {cfg.top_k}, {cfg.max_detections}")
    boxes = decode(raw.loc, raw.priors)  # [B, P, 4]
    scores = raw.conf[..., 1:]
    candidate = scores.max(dim=-1).values > cfg.conf_threshold  # [B, P]
    nms = _cross_class if cfg.cross_class_nms else _per_class
    flat_scores, flat_classes, flat_priors, keep = nms(boxes, scores, candidate, cfg)
    rank, real = stable_topk_where(flat_scores, keep, min(cfg.max_detections, flat_scores.shape[1]))  # [B, D]
    det_scores = torch.gather(flat_scores, 1, rank)
    if cfg.score_threshold > 0:
        real &= det_scores > cfg.score_threshold
    prior = torch.gather(flat_priors, 1, rank)
    zero = torch.zeros((), dtype=det_scores.dtype, device=det_scores.device)
    selected = SelectedDetections(
        boxes=torch.where(real[..., None], _gather_rows(boxes, prior), zero),
        scores=torch.where(real, det_scores, zero),
        classes=torch.where(real, torch.gather(flat_classes, 1, rank), -1),
        coeffs=torch.where(real[..., None], _gather_rows(raw.coeffs, prior), zero),
        num_detections=real.sum(dim=1),
    )
    return selected, real


def static_masks(
    raw: RawOutputs, selected: SelectedDetections, valid: torch.Tensor, cfg: PostprocessConfig = PostprocessConfig()
) -> torch.Tensor:
    """``[B, D, H', W']`` mask probabilities, cropped to the boxes, zero in empty slots: the product
    :func:`.postprocess.assemble_masks` computes, for every slot. The crop (the original's rule, as
    :func:`~trt_yolact.model.boxes.box_window`) is applied as its row and column factors, with the validity
    folded into the rows."""
    proto = raw.proto  # [B, H', W', K]
    batch, proto_h, proto_w, _ = proto.shape
    masks = torch.matmul(selected.coeffs, proto.reshape(batch, proto_h * proto_w, -1).transpose(1, 2))
    masks = torch.sigmoid_(masks).reshape(batch, -1, proto_h, proto_w)
    rows = valid[..., None].to(masks.dtype)  # [B, D, 1]
    if not cfg.crop_masks:
        return masks.mul_(rows[..., None])
    inside_y, inside_x = box_window_factors(selected.boxes, proto_h, proto_w)
    return masks.mul_((inside_y.to(masks.dtype) * rows)[..., :, None]).mul_(inside_x.to(masks.dtype)[..., None, :])


def full_size_static(
    masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every slot's mask upsampled to the batch's one image ``size`` (one resize, thresholded at 0.5: the
    CUDA path of :mod:`.postprocess`) and the pixel boxes there; static shapes, for a CUDA graph."""
    height, width = size
    full = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False) > 0.5
    x1, x2 = sanitize_coordinates(boxes[..., 0], boxes[..., 2], width)
    y1, y2 = sanitize_coordinates(boxes[..., 1], boxes[..., 3], height)
    return full, torch.stack((x1, y1, x2, y2), dim=-1).long()


def postprocess_static_tensors(
    raw: RawOutputs, cfg: PostprocessConfig = PostprocessConfig(), image_size: tuple[int, int] | None = None
) -> StaticDetections:
    """The whole static post-processing of a batch, no host synchronisation. With ``image_size`` (one size
    for the batch) and full-resolution masks, the masks and pixel boxes at that size are computed too."""
    selected, valid = select_static(raw, cfg)
    masks = static_masks(raw, selected, valid, cfg)
    result = StaticDetections(selected, valid, masks)
    if image_size is not None and cfg.full_resolution_masks:
        result.full_masks, result.pixel_boxes = full_size_static(masks, selected.boxes, image_size)
    return result


def split_detections(
    static: StaticDetections,
    image_sizes: list[tuple[int, int]],
    cfg: PostprocessConfig = PostprocessConfig(),
    memory: MaskMemory | None = None,
) -> list[Detections]:
    """Static detections -> one :class:`Detections` per image (the one host synchronisation: the counts).

    Full-resolution masks not computed statically are made here as :mod:`.postprocess` makes them on the
    device: the windowed upsampling of the real masks on the CPU (allocated from ``memory`` when given), one
    resize per image on a GPU."""
    selected = static.selected
    if len(image_sizes) != selected.scores.shape[0]:
        raise UsageError(f"{len(image_sizes)} image sizes for a batch of {selected.scores.shape[0]}")
    counts = selected.num_detections.tolist()
    to_upsample = cfg.full_resolution_masks and static.full_masks is None  # not made statically already
    full = upsample_masks(static.masks, counts, image_sizes, memory) if to_upsample else {}
    results = []
    for b, (height, width) in enumerate(image_sizes):
        n = counts[b]
        rel = selected.boxes[b, :n]
        if static.pixel_boxes is not None:
            pixel_boxes = static.pixel_boxes[b, :n]
        else:
            x1, x2 = sanitize_coordinates(rel[:, 0], rel[:, 2], width)
            y1, y2 = sanitize_coordinates(rel[:, 1], rel[:, 3], height)
            pixel_boxes = torch.stack((x1, y1, x2, y2), dim=1).long()
        if not cfg.full_resolution_masks:
            masks = static.masks[b, :n]
        else:
            masks = static.full_masks[b, :n] if static.full_masks is not None else full[b]
        results.append(
            Detections(pixel_boxes, selected.scores[b, :n], selected.classes[b, :n], masks, (height, width), rel)
        )
    return results


def postprocess_static(
    raw: RawOutputs, image_sizes: list[tuple[int, int]], cfg: PostprocessConfig = PostprocessConfig()
) -> list[Detections]:
    """Raw outputs of a batch -> one :class:`Detections` per image through the static path: the same
    detections as :func:`.postprocess.postprocess`."""
    one_size = image_sizes[0] if len(set(image_sizes)) == 1 and raw.proto.device.type != "cpu" else None
    return split_detections(postprocess_static_tensors(raw, cfg, one_size), image_sizes, cfg)
