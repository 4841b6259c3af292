"""Raw head outputs -> detections, for a whole batch in one pass, on CPU or CUDA alike.

Two stages: :func:`select_detections` (decode, threshold, Fast NMS, top-N) works on padded ``[B, D]``
tensors with no per-image Python loop; :func:`assemble_masks` combines prototypes and coefficients into
masks and splits the batch into one :class:`Detections` per image. The results equal the original YOLACT's
``Detect`` + ``postprocess`` (per-class Fast NMS, same ordering), image for image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PostprocessConfig
from ..errors import UsageError
from ..model.boxes import box_window_factors, decode, pairwise_iou, sanitize_coordinates
from ..structures import Detections, RawOutputs, SelectedDetections
from .mask_memory import MaskMemory

_INVALID = -1.0  # below any probability: marks padded slots


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values [B, P, F]`` gathered at ``index [B, ...]`` -> ``[B, ..., F]``."""
    batch = values.shape[0]
    flat = index.reshape(batch, -1)
    gathered = torch.gather(values, 1, flat[..., None].expand(-1, -1, values.shape[-1]))
    return gathered.reshape(*index.shape, values.shape[-1])


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of a stable descending sort along the last dim (ties: lower index first).

    Equal to ``torch.sort(scores, descending=True, stable=True)[..., :k]`` but O(n) for most rows: one
    ``topk``, then a reorder of the ``k`` winners; only rows with ties straddling the k-th place (where
    ``topk`` may pick any of them) fall back to a full stable sort.
    """
    _, index = torch.topk(scores, k, dim=-1)
    index = index.sort(dim=-1).values
    values, order = torch.sort(torch.gather(scores, -1, index), dim=-1, descending=True, stable=True)
    index = torch.gather(index, -1, order)
    straddling = (scores >= values[..., -1:]).sum(dim=-1) > k
    if bool(straddling.any()):
        full_values, full_index = torch.sort(scores[straddling], dim=-1, descending=True, stable=True)
        values[straddling] = full_values[..., :k]
        index[straddling] = full_index[..., :k]
    return values, index


def fast_nms_keep(boxes: torch.Tensor, threshold: float, rows_per_chunk: int = 64) -> torch.Tensor:
    """Fast NMS on score-sorted boxes ``[..., K, 4]``: box ``j`` survives unless a box ranked before it
    overlaps it by more than ``threshold`` (the triangular IoU trick). Rows go in chunks so that the
    ``K x K`` temporaries stay small; IoU is symmetric, so row ``j`` of the strictly lower triangle holds
    the boxes ranked before ``j`` and the reduction runs along contiguous memory."""
    leading, k = boxes.shape[:-2], boxes.shape[-2]
    flat = boxes.reshape(-1, k, 4)
    keep = torch.empty(flat.shape[:2], dtype=torch.bool, device=boxes.device)
    not_before = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu_()
    for start in range(0, flat.shape[0], rows_per_chunk):
        chunk = flat[start : start + rows_per_chunk]
        iou = pairwise_iou(chunk, chunk).masked_fill_(not_before, 0)
        keep[start : start + rows_per_chunk] = iou.max(dim=-1).values <= threshold
    return keep.reshape(*leading, k)


def _candidates(conf: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[B, M]`` of the priors whose best class beats ``threshold``, in prior order, padded to the
    largest count in the batch, and the validity mask ``[B, M]``. Compacting first keeps the sorts small."""
    candidate = conf[..., 1:].max(dim=-1).values > threshold
    counts = candidate.sum(dim=1)
    width = max(int(counts.max()), 1)
    # A stable sort of "not a candidate" puts candidates first and keeps their prior order.
    order = torch.sort((~candidate).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=conf.device)[None] < counts[:, None]
    return order, valid


def _per_class_fast_nms(boxes, scores, valid, cfg: PostprocessConfig):
    """Per-class Fast NMS. ``boxes [B,M,4]``, ``scores [B,M,C]`` (no background), ``valid [B,M]``.

    Returns flat per-image candidates ``(scores [B,C*K], class [B,C*K], index [B,C*K], keep [B,C*K])`` in
    class-major order, as the original flattens them.
    """
    class_scores = scores.transpose(1, 2).masked_fill(~valid[:, None, :], _INVALID)  # [B, C, M]
    sorted_scores, order = stable_topk(class_scores, min(cfg.top_k, class_scores.shape[-1]))  # [B, C, K]
    # Each box is suppressed by any higher-scoring box of its class that overlaps it too much.
    keep = fast_nms_keep(_gather_rows(boxes, order), cfg.nms_threshold) & (sorted_scores > _INVALID)
    return flatten_classes(sorted_scores, order, keep)


def flatten_classes(
    sorted_scores: torch.Tensor, order: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class ``[B, C, K]`` scores, prior indices and keep flags as ``[B, C*K]`` rows, with each row's class."""
    batch, num_classes, _ = order.shape
    classes = torch.arange(num_classes, device=order.device).view(1, -1, 1).expand_as(order)
    return (
        sorted_scores.reshape(batch, -1),
        classes.reshape(batch, -1),
        order.reshape(batch, -1),
        keep.reshape(batch, -1),
    )


def _cross_class_fast_nms(boxes, scores, valid, cfg: PostprocessConfig):
    """Fast NMS over all classes at once: each prior competes with its best class only."""
    best_scores, best_classes = scores.max(dim=-1)  # [B, M]
    best_scores = best_scores.masked_fill(~valid, _INVALID)
    sorted_scores, order = stable_topk(best_scores, min(cfg.top_k, best_scores.shape[-1]))
    keep = fast_nms_keep(_gather_rows(boxes, order), cfg.nms_threshold) & (sorted_scores > _INVALID)
    return sorted_scores, torch.gather(best_classes, 1, order), order, keep


def select_detections(raw: RawOutputs, cfg: PostprocessConfig = PostprocessConfig()) -> SelectedDetections:
    """Decode, threshold, Fast NMS and keep the best ``max_detections`` per image, batched."""
    boxes = decode(raw.loc, raw.priors)  # [B, P, 4]
    index, valid = _candidates(raw.conf, cfg.conf_threshold)  # [B, M]
    cand_boxes = _gather_rows(boxes, index)
    cand_scores = _gather_rows(raw.conf[..., 1:], index)
    nms = _cross_class_fast_nms if cfg.cross_class_nms else _per_class_fast_nms
    flat_scores, flat_classes, flat_index, keep = nms(cand_boxes, cand_scores, valid, cfg)
    # Best kept detections first; a stable sort keeps the original's class-major order among equal scores.
    ranked = flat_scores.masked_fill(~keep, _INVALID - 1)
    ranked_scores, ranked_order = torch.sort(ranked, dim=1, descending=True, stable=True)
    limit = min(cfg.max_detections, ranked_order.shape[1])
    ranked_scores, ranked_order = ranked_scores[:, :limit], ranked_order[:, :limit]
    is_real = ranked_scores > _INVALID
    if cfg.score_threshold > 0:
        is_real &= ranked_scores > cfg.score_threshold
    num_detections = is_real.sum(dim=1)
    # Shrink the padding to the largest real count so that mask work scales with real detections.
    width = int(num_detections.max()) if num_detections.numel() else 0
    ranked_order = ranked_order[:, :width]
    candidate_slot = torch.gather(flat_index, 1, ranked_order)  # index into the candidate list
    prior_index = torch.gather(index, 1, candidate_slot)
    return SelectedDetections(
        boxes=_gather_rows(boxes, prior_index),
        scores=ranked_scores[:, :width],
        classes=torch.gather(flat_classes, 1, ranked_order),
        coeffs=_gather_rows(raw.coeffs, prior_index),
        num_detections=num_detections,
    )


def assemble_masks(
    raw: RawOutputs,
    selected: SelectedDetections,
    image_sizes: list[tuple[int, int]],
    cfg: PostprocessConfig = PostprocessConfig(),
    memory: MaskMemory | None = None,
) -> list[Detections]:
    """Masks = sigmoid(proto @ coeffs^T), cropped to the box, upsampled to each image's own size.

    ``memory``: where full-resolution masks on the CPU are allocated (recycled between batches); None: fresh."""
    if len(image_sizes) != selected.scores.shape[0]:
        raise UsageError(f"{len(image_sizes)} image sizes for a batch of {selected.scores.shape[0]}")
    proto = raw.proto  # [B, H', W', K]
    batch, proto_h, proto_w, _ = proto.shape
    # coeffs @ proto^T gives [B, D, H'*W'] directly: masks first, no transpose of the result.
    masks = torch.matmul(selected.coeffs, proto.reshape(batch, proto_h * proto_w, -1).transpose(1, 2))
    masks = torch.sigmoid_(masks).reshape(batch, -1, proto_h, proto_w)  # [B, D, H', W']
    if cfg.crop_masks:
        # By the window's row and column factors: two in-place passes instead of a full-size window.
        inside_y, inside_x = box_window_factors(selected.boxes, proto_h, proto_w)
        masks.mul_(inside_y.to(masks.dtype)[..., :, None]).mul_(inside_x.to(masks.dtype)[..., None, :])
    counts = selected.num_detections.tolist()
    full = upsample_masks(masks, counts, image_sizes, memory) if cfg.full_resolution_masks else {}
    results = []
    for b, (height, width) in enumerate(image_sizes):
        n = counts[b]
        rel = selected.boxes[b, :n]
        x1, x2 = sanitize_coordinates(rel[:, 0], rel[:, 2], width)
        y1, y2 = sanitize_coordinates(rel[:, 1], rel[:, 3], height)
        pixel_boxes = torch.stack((x1, y1, x2, y2), dim=1).long()
        results.append(
            Detections(
                boxes=pixel_boxes,
                scores=selected.scores[b, :n],
                classes=selected.classes[b, :n],
                masks=full[b] if cfg.full_resolution_masks else masks[b, :n],
                image_size=(int(height), int(width)),
                boxes_relative=rel,
            )
        )
    return results


def upsample_masks(
    masks: torch.Tensor,
    counts: list[int],
    image_sizes: list[tuple[int, int]],
    memory: MaskMemory | None = None,
) -> dict[int, torch.Tensor]:
    """The first ``counts[b]`` masks of each image ``b`` of ``masks [B, D, H', W']`` (probabilities, cropped
    or not) at the image's own size, thresholded at 0.5: bool ``[counts[b], h, w]`` per image, on the device
    of ``masks``. ``memory``: where the CPU path allocates them; None: fresh memory."""
    full: dict[int, torch.Tensor] = {}
    groups: dict[tuple[int, int], list[int]] = {}
    for b, size in enumerate(image_sizes):
        groups.setdefault(tuple(size), []).append(b)
    for (height, width), members in groups.items():
        if masks.device.type == "cpu":
            full.update(_upsample_group(masks, members, counts, height, width, memory))
        else:
            full.update(_upsample_whole(masks, members, counts, height, width))
    return full


def _bilinear_axis(in_size: int, out_size: int, device: torch.device):
    """Source indices and weights of bilinear resampling along one axis (``align_corners=False``), computed
    the way PyTorch's kernel does, so that windowed resampling reproduces ``F.interpolate``."""
    scale = torch.tensor(float(in_size), dtype=torch.float32) / float(out_size)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    first = torch.clamp(src.floor().long(), max=in_size - 1)
    second = torch.where(first < in_size - 1, first + 1, first)
    weight_second = (src - first).clamp_(0, 1)
    return first.to(device), second.to(device), (1 - weight_second).to(device), weight_second.to(device)


def _upsample_group(
    masks: torch.Tensor,
    members: list[int],
    counts: list[int],
    height: int,
    width: int,
    memory: MaskMemory | None = None,
) -> dict[int, torch.Tensor]:
    """Bilinear upsampling of the real masks of images that share one size, thresholded at 0.5.

    An upsampled pixel can pass 0.5 only where one of its bilinear taps comes near it: only the window of
    pixels whose taps reach such low-resolution cells is computed (:func:`_mask_windows`), which makes the
    cost follow the mask's area, within its box when cropped, rather than the image area. The arithmetic is
    the CPU ``F.interpolate``'s products and two-term sums; the kernel's own rounding can still differ by an
    ulp, which changes a pixel only where the interpolated value is within an ulp of 0.5. Padding slots are
    skipped. ``memory``: where the output is allocated; None: fresh memory. The CPU path: on a GPU,
    :func:`_upsample_whole` replaces it.

    Separable: the horizontal pass runs on the few low-resolution rows a window reads, the vertical pass
    then reads two of those per output row, with the same products and two-term sums as ``F.interpolate``.
    The loop over masks is in NumPy, whose per-call cost is a fraction of torch's: per-call cost, not pixel
    work, dominates a few small ops per mask.
    """
    proto_h, proto_w = masks.shape[-2:]
    rows0, rows1, row_w0, row_w1 = _bilinear_axis(proto_h, height, masks.device)
    cols0, cols1, col_w0, col_w1 = _bilinear_axis(proto_w, width, masks.device)
    # Both taps of output pixel i sit at 2i and 2i+1, so any window's taps are one contiguous slice.
    row_taps = torch.stack((rows0, rows1), 1).view(-1).numpy()
    row_weights = torch.stack((row_w0, row_w1), 1).view(-1, 1).numpy()
    col_taps = torch.stack((cols0, cols1), 1).view(-1).numpy()
    col_weights = torch.stack((col_w0, col_w1), 1).view(-1).numpy()
    windows = _mask_windows(masks, members, counts, (rows0, rows1, cols0, cols1))
    low = masks.detach().numpy()
    memory = memory or MaskMemory(max_bytes=0)
    out = {}
    for b in members:
        out[b] = memory.zeros((counts[b], height, width), windows[b])
        full = out[b].numpy()  # the same memory: NumPy writes the windows into the returned tensor
        for d, (ya, yb, xa, xb) in enumerate(windows[b]):
            if ya >= yb or xa >= xb:
                continue
            top = row_taps[2 * ya]
            horizontal = low[b, d, top : row_taps[2 * yb - 1] + 1].take(col_taps[2 * xa : 2 * xb], axis=1)
            horizontal *= col_weights[2 * xa : 2 * xb]
            horizontal = horizontal[:, 0::2] + horizontal[:, 1::2]  # [rows read, w]
            vertical = horizontal.take(row_taps[2 * ya : 2 * yb] - top, axis=0)  # [2h, w]: top, bottom taps
            vertical *= row_weights[2 * ya : 2 * yb]
            np.greater(vertical[0::2] + vertical[1::2], 0.5, out=full[d, ya:yb, xa:xb])
    return out


# A bilinear sample combines its four taps with weights in [0, 1] whose sums exceed 1 by float32 rounding only
# (a relative 6 * 2**-24 at most over both passes, products and sums included): where no tap reaches this
# value, the sample stays below 0.5.
_MAY_REACH_HALF = 0.5 * (1 - 1e-6)


def _mask_windows(
    masks: torch.Tensor,
    members: list[int],
    counts: list[int],
    taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> dict[int, list[tuple[int, int, int, int]]]:
    """Per image, the output window ``(y0, y1, x0, x1)`` of each real mask: the pixels whose bilinear taps
    reach the bounding box of its low-resolution cells that may reach 0.5. Every pixel outside it is below
    0.5 (the crop's zeros among them), so it is the only part to compute; empty when no cell may."""
    rows0, rows1, cols0, cols1 = taps
    # [M, D, H', W']: this size group's images (each group calls this once); no copy when they are the batch.
    group = masks if len(members) == masks.shape[0] else masks[members]
    first_row, last_row = _true_span(group.amax(dim=-1) >= _MAY_REACH_HALF)
    first_col, last_col = _true_span(group.amax(dim=-2) >= _MAY_REACH_HALF)
    # Output pixels with a tap in that box (tap indices grow with the output index); whole group at once.
    bounds = torch.stack(
        (
            torch.searchsorted(rows1, first_row),
            torch.searchsorted(rows0, last_row, right=True),
            torch.searchsorted(cols1, first_col),
            torch.searchsorted(cols0, last_col, right=True),
        ),
        dim=-1,
    ).tolist()  # [len(members)][D][4]
    return {b: [tuple(w) for w in image[: counts[b]]] for b, image in zip(members, bounds)}


def _true_span(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index of True along the last dim of ``flags``; ``(n, -1)`` where none is."""
    n = flags.shape[-1]
    index = torch.arange(n, device=flags.device)
    return torch.where(flags, index, n).amin(dim=-1), torch.where(flags, index, -1).amax(dim=-1)


def _upsample_whole(
    masks: torch.Tensor, members: list[int], counts: list[int], height: int, width: int
) -> dict[int, torch.Tensor]:
    """GPU path of :func:`_upsample_group`: one bilinear resize of all of an image's masks, then the 0.5
    threshold. A GPU pays per kernel launch, not per pixel: the windowed path's few ops per mask would make
    post-processing launch-bound there. Pixels outside a cropped mask's window resample zeros, so both paths
    agree up to CUDA's rounding."""
    out = {}
    for b in members:
        if counts[b] == 0:  # interpolate refuses an empty channel dimension
            out[b] = torch.zeros((0, height, width), dtype=torch.bool, device=masks.device)
            continue
        resized = F.interpolate(
            masks[b : b + 1, : counts[b]], size=(height, width), mode="bilinear", align_corners=False
        )
        out[b] = resized[0] > 0.5
    return out


def postprocess(
    raw: RawOutputs,
    image_sizes: list[tuple[int, int]],
    cfg: PostprocessConfig = PostprocessConfig(),
    memory: MaskMemory | None = None,
) -> list[Detections]:
    """Raw outputs of a batch -> one :class:`Detections` per image; ``memory`` as in :func:`assemble_masks`."""
    return assemble_masks(raw, select_detections(raw, cfg), image_sizes, cfg, memory)
