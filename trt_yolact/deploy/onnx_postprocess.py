"""YOLACT post-processing with static shapes only, for export into the ONNX graph (``--postprocess graph``).

:class:`GraphPostprocess` computes what :func:`trt_yolact.inference.postprocess.select_detections` and the
low-resolution :func:`~trt_yolact.inference.postprocess.assemble_masks` compute (decode, candidate threshold,
per-class Fast NMS, top-N, mask assembly and cropping), but every tensor has a fixed size: top-k with a
fixed ``k``, gathers and masked fills instead of boolean indexing, and a fixed number of output slots
(``max_detections``) per image. It therefore exports to plain ONNX operators (TopK, Gather, Where,
MatMul, ...; no NonMaxSuppression, no plugins) for ONNX Runtime and TensorRT alike. It is an ordinary
module too: in eager mode it is an alternative batched post-processing without any host synchronisation.

Equality with the torch post-processing: ties are ordered by the lower index in both (a stable sort in
eager mode; ONNX TopK specifies the same tie-break). Non-candidate priors get the score ``-1`` and sort
after every real candidate, so they never suppress one and are never kept: the kept detections are the
same whether an image has 5 or 5000 candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PostprocessConfig
from ..errors import UsageError
from ..model.boxes import decode, sanitize_coordinates
from ..structures import GraphDetections, RawOutputs

_INVALID = -1.0  # score of a slot that is not a candidate (below any probability)
_DROPPED = -2.0  # ranking score of a candidate that Fast NMS suppressed
PAD_CLASS = -1  # class of an empty output slot


def _top_descending(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest values along the last axis, best first, ties by the lower index.

    Eager mode uses a stable sort (torch.topk does not promise an order among ties); in the graph this is
    ONNX TopK, whose specification breaks ties by the lower index as well.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(values, k, dim=-1, largest=True, sorted=True)
    ordered, index = torch.sort(values, dim=-1, descending=True, stable=True)
    return ordered[..., :k], index[..., :k]


def _pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of point-form ``boxes [..., K, 4]`` -> ``[..., K, K]``, out of place (exportable;
    :func:`trt_yolact.model.boxes.pairwise_iou` works in place for eager speed). Same arithmetic and order:
    intersection = width * height, union = (area_a + area_b) - intersection."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    width = (torch.min(x2.unsqueeze(-1), x2.unsqueeze(-2)) - torch.max(x1.unsqueeze(-1), x1.unsqueeze(-2))).clamp(min=0)
    height = (torch.min(y2.unsqueeze(-1), y2.unsqueeze(-2)) - torch.max(y1.unsqueeze(-1), y1.unsqueeze(-2))).clamp(
        min=0
    )
    intersection = width * height
    area = (x2 - x1) * (y2 - y1)
    return intersection / (area.unsqueeze(-1) + area.unsqueeze(-2) - intersection)


def _crop(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """:func:`trt_yolact.model.boxes.crop_masks` (zero ``masks [B, H, W, D]`` outside the padded ``boxes
    [B, D, 4]``), with the pixel grid built from Python ints so that it is a constant of the graph."""
    height, width = int(masks.shape[-3]), int(masks.shape[-2])
    x1, x2 = sanitize_coordinates(boxes[..., 0], boxes[..., 2], width, padding)
    y1, y2 = sanitize_coordinates(boxes[..., 1], boxes[..., 3], height, padding)
    columns = torch.arange(width, device=masks.device, dtype=x1.dtype).view(width, 1)
    rows = torch.arange(height, device=masks.device, dtype=y1.dtype).view(height, 1)
    inside_x = (columns >= x1.unsqueeze(-2)) & (columns < x2.unsqueeze(-2))  # [B, W, D]
    inside_y = (rows >= y1.unsqueeze(-2)) & (rows < y2.unsqueeze(-2))  # [B, H, D]
    inside = inside_y.unsqueeze(-2) & inside_x.unsqueeze(-3)  # [B, H, W, D]
    return masks * inside.to(masks.dtype)


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values [B, P, F]`` at ``index [B, ...]`` -> ``[B, ..., F]`` (static-shape gather)."""
    flat = index.flatten(1)
    gathered = torch.gather(values, 1, flat.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return gathered.reshape(index.shape + (values.shape[-1],))


class GraphPostprocess(nn.Module):
    """Raw head outputs -> :class:`GraphDetections` with ``cfg.max_detections`` slots per image.

    Honours ``conf_threshold``, ``nms_threshold``, ``top_k``, ``max_detections``, ``cross_class_nms``,
    ``score_threshold`` and ``crop_masks`` of :class:`PostprocessConfig`; masks are always the
    low-resolution probabilities (``full_resolution_masks`` does not apply: resizing to each image's own
    size is left to the caller).
    """

    def __init__(self, cfg: PostprocessConfig = PostprocessConfig()):
        super().__init__()
        if cfg.top_k < 1 or cfg.max_detections < 1:
            raise UsageError(f"top_k and max_detections must be at least 1, got {cfg.top_k}, {cfg.max_detections}")
        self.cfg = cfg

    def _fast_nms_keep(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Fast NMS over score-sorted ``boxes [..., K, 4]``: a box is dropped when a higher-ranked box
        overlaps it by more than the threshold. Padded slots (score -1) are never kept."""
        k = int(scores.shape[-1])  # a Python int: the triangle becomes a constant of the graph
        slots = torch.arange(k, device=boxes.device)
        upper = slots.view(k, 1) < slots.view(1, k)  # strictly upper triangle: row ranks above column
        iou = torch.where(upper, _pairwise_iou(boxes), torch.zeros((), dtype=boxes.dtype, device=boxes.device))
        return (iou.max(dim=-2).values <= self.cfg.nms_threshold) & (scores > _INVALID)

    def _nms_candidates(
        self, boxes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Fast NMS per class (or across classes): the ranking score of every NMS slot (``_DROPPED`` when
        suppressed), its prior, its class (None: per class, the class is ``slot // k``) and ``k``."""
        cfg = self.cfg
        candidate = scores.max(dim=-1).values > cfg.conf_threshold  # [B, P]
        invalid = torch.full((), _INVALID, dtype=scores.dtype, device=scores.device)
        k = min(cfg.top_k, int(scores.shape[1]))
        if cfg.cross_class_nms:
            best_scores, best_classes = scores.max(dim=-1)
            ranked, prior_index = _top_descending(torch.where(candidate, best_scores, invalid), k)  # [B, K]
            keep = self._fast_nms_keep(_gather_rows(boxes, prior_index), ranked)
            flat_classes = torch.gather(best_classes, 1, prior_index)
        else:
            class_scores = torch.where(candidate.unsqueeze(1), scores.transpose(1, 2), invalid)  # [B, C, P]
            ranked, prior_index = _top_descending(class_scores, k)  # [B, C, K]
            keep = self._fast_nms_keep(_gather_rows(boxes, prior_index), ranked)
            # Flattened class-major, as select_detections flattens: slot j belongs to class j // K.
            ranked, prior_index, keep, flat_classes = ranked.flatten(1), prior_index.flatten(1), keep.flatten(1), None
        dropped = torch.full((), _DROPPED, dtype=scores.dtype, device=scores.device)
        return torch.where(keep, ranked, dropped), prior_index, flat_classes, k

    def _masks(
        self, proto: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor, real: torch.Tensor
    ) -> torch.Tensor:
        """``[B, D, H', W']`` mask probabilities of the detections, zero in empty slots."""
        # [B, H', W', K'] @ [B, 1, K', D] -> [B, H', W', D]: the prototype layout _crop works in.
        masks = torch.sigmoid(torch.matmul(proto, coeffs.transpose(1, 2).unsqueeze(1)))
        if self.cfg.crop_masks:
            masks = _crop(masks, boxes)
        # Empty slots are zeroed so that they are harmless even when a consumer ignores num_dets.
        return masks.permute(0, 3, 1, 2) * real[:, :, None, None].to(masks.dtype)

    def forward(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        coeffs: torch.Tensor,
        proto: torch.Tensor,
        priors: torch.Tensor,
    ) -> GraphDetections:
        cfg = self.cfg
        boxes = decode(loc, priors)  # [B, P, 4]
        ranking, flat_index, flat_classes, k = self._nms_candidates(boxes, conf[..., 1:])
        short = cfg.max_detections - int(ranking.shape[1])
        if short > 0:  # fewer NMS slots than output slots (tiny models): pad with dropped entries
            ranking = F.pad(ranking, (0, short), value=_DROPPED)
            flat_index = F.pad(flat_index, (0, short))
            if flat_classes is not None:
                flat_classes = F.pad(flat_classes, (0, short))
        det_scores, order = _top_descending(ranking, cfg.max_detections)  # [B, D]
        real = det_scores > _INVALID
        if cfg.score_threshold > 0:
            real = real & (det_scores > cfg.score_threshold)
        if flat_classes is None:
            det_classes = torch.div(order, k, rounding_mode="trunc")  # indices >= 0: ONNX integer Div
        else:
            det_classes = torch.gather(flat_classes, 1, order)
        det_prior = torch.gather(flat_index, 1, order)  # [B, D]
        det_boxes = _gather_rows(boxes, det_prior)
        masks = self._masks(proto, _gather_rows(coeffs, det_prior), det_boxes, real)
        zero = torch.zeros((), dtype=det_scores.dtype, device=det_scores.device)
        return GraphDetections(
            num_dets=real.sum(dim=1).to(torch.int32),
            boxes=torch.where(real.unsqueeze(-1), det_boxes, zero),
            scores=torch.where(real, det_scores, zero),
            classes=torch.where(real, det_classes, torch.full_like(det_classes, PAD_CLASS)).to(torch.int32),
            masks=masks,
        )

    def run(self, raw: RawOutputs) -> GraphDetections:
        """Convenience: post-process a :class:`RawOutputs`."""
        return self(raw.loc, raw.conf, raw.coeffs, raw.proto, raw.priors)


class YolactWithPostprocess(nn.Module):
    """YOLACT followed by :class:`GraphPostprocess`: images -> :class:`GraphDetections` (the exported graph).

    The network is the submodule ``model``, so exported node names tell it apart from the post-processing
    (:func:`trt_yolact.deploy.onnx_fp16.convert_fp16` keeps every node outside ``/model/`` in FP32).
    """

    def __init__(self, model: nn.Module, cfg: PostprocessConfig = PostprocessConfig()):
        super().__init__()
        self.model = model
        self.postprocess = GraphPostprocess(cfg)
        self.config = getattr(model, "config", None)

    def forward(self, images: torch.Tensor) -> GraphDetections:
        return self.postprocess.run(self.model(images))
