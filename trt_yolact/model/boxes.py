"""Box arithmetic shared by post-processing and the loss.

Boxes are either *center form* ``(cx, cy, w, h)`` (priors) or *point form* ``(x1, y1, x2, y2)``, both
relative to the network input size. Every function works on any leading batch dimensions and on CPU or
CUDA tensors alike.
"""

from __future__ import annotations

import torch

# SSD box-coding variances used by YOLACT for centre offsets and log-scale sizes.
VARIANCES = (0.1, 0.2)


def point_form(boxes: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    return torch.cat((boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2), dim=-1)


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    return torch.cat(((boxes[..., 2:] + boxes[..., :2]) / 2, boxes[..., 2:] - boxes[..., :2]), dim=-1)


def decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Decode regression offsets ``loc [..., P, 4]`` against ``priors [P, 4]`` into point-form boxes.

    The arithmetic follows the original order of operations exactly (centre, size, then corners), so
    boxes match the reference implementation bit for bit on the same device.
    """
    centers = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    top_left = centers - sizes / 2
    return torch.cat((top_left, sizes + top_left), dim=-1)


def encode(matched: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`decode`: point-form ground truth ``[..., P, 4]`` -> regression targets."""
    gt_center = (matched[..., :2] + matched[..., 2:]) / 2
    gt_size = matched[..., 2:] - matched[..., :2]
    offset = (gt_center - priors[..., :2]) / (VARIANCES[0] * priors[..., 2:])
    log_scale = torch.log(gt_size / priors[..., 2:]) / VARIANCES[1]
    return torch.cat((offset, log_scale), dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor, crowd: bool = False) -> torch.Tensor:
    """IoU between every pair of point-form boxes: ``[..., A, 4] x [..., B, 4] -> [..., A, B]``.

    With ``crowd=True`` the result is intersection over the area of ``boxes_a`` (COCO crowd semantics).
    Works on contiguous coordinate planes with in-place ops: no ``[..., A, B, 2]`` temporaries and no
    strided broadcasting, which matters for Fast NMS on ``[B, classes, 200, 200]``. The arithmetic is the
    original's.
    """
    ax1, ay1, ax2, ay2 = (c.contiguous().unsqueeze(-1) for c in boxes_a.unbind(-1))
    bx1, by1, bx2, by2 = (c.contiguous().unsqueeze(-2) for c in boxes_b.unbind(-1))
    low = torch.max(ax1, bx1)
    intersection = torch.min(ax2, bx2).sub_(low).clamp_(min=0)
    torch.max(ay1, by1, out=low)
    height = torch.min(ay2, by2).sub_(low).clamp_(min=0)
    intersection.mul_(height)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    if crowd:
        return intersection.div_(area_a)
    union = torch.add(area_a, (bx2 - bx1) * (by2 - by1), out=height).sub_(intersection)
    return intersection.div_(union)


def sanitize_coordinates(
    low: torch.Tensor, high: torch.Tensor, size: int, padding: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale relative coordinates to pixels, order them, pad and clamp to ``[0, size]``.

    As in the original, only the lower edge is clamped at 0 and only the upper edge at ``size``.
    """
    low = low * size
    high = high * size
    first = torch.min(low, high)
    second = torch.max(low, high)
    return torch.clamp(first - padding, min=0), torch.clamp(second + padding, max=size)


def box_window_factors(
    boxes: torch.Tensor, height: int, width: int, padding: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The window of :func:`box_window` as its factors: bool rows ``[..., N, H]`` and columns ``[..., N, W]``,
    whose outer product is the window. Multiplying by both is the crop without a full-size window."""
    x1, x2 = sanitize_coordinates(boxes[..., 0], boxes[..., 2], width, padding)
    y1, y2 = sanitize_coordinates(boxes[..., 1], boxes[..., 3], height, padding)
    columns = torch.arange(width, device=boxes.device, dtype=x1.dtype)
    rows = torch.arange(height, device=boxes.device, dtype=y1.dtype)
    inside_y = (rows >= y1[..., None]) & (rows < y2[..., None])
    inside_x = (columns >= x1[..., None]) & (columns < x2[..., None])
    return inside_y, inside_x


def box_window(boxes: torch.Tensor, height: int, width: int, padding: int = 1) -> torch.Tensor:
    """``[..., N, H, W]`` bool: the cells of an ``H x W`` grid inside each padded relative box
    (columns ``x1 <= c < x2`` after :func:`sanitize_coordinates`, the original's crop rule)."""
    inside_y, inside_x = box_window_factors(boxes, height, width, padding)
    return inside_y[..., :, None] & inside_x[..., None, :]


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero every mask outside its (padded) box.

    ``masks [..., H, W, N]`` (prototype layout) and relative point-form ``boxes [..., N, 4]``.
    """
    inside = box_window(boxes, masks.shape[-3], masks.shape[-2], padding).movedim(-3, -1)
    return masks * inside.to(masks.dtype)
