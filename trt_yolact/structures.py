"""Typed data that flows between pipeline stages: network outputs, detections, in-graph detections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class RawOutputs(NamedTuple):
    """Raw head outputs of YOLACT, identical for every backend (torch, ONNX Runtime, TensorRT).

    A NamedTuple (not a dict) so that it traces and exports to ONNX as a plain tuple in this order.
    """

    loc: torch.Tensor  # [B, P, 4] encoded box offsets
    conf: torch.Tensor  # [B, P, C] class probabilities (softmax), C includes background at index 0
    coeffs: torch.Tensor  # [B, P, K] mask coefficients (tanh)
    proto: torch.Tensor  # [B, H', W', K] prototypes, NHWC, after ReLU
    priors: torch.Tensor  # [P, 4] prior boxes (cx, cy, w, h), relative to the input size


OUTPUT_NAMES: tuple[str, ...] = RawOutputs._fields
# Outputs without a batch axis: the same for every image, so never split, padded or trimmed.
UNBATCHED_OUTPUTS = frozenset({"priors"})


class TrainOutputs(NamedTuple):
    """What the loss needs from one training forward pass."""

    loc: torch.Tensor  # [B, P, 4]
    conf_logits: torch.Tensor  # [B, P, C] before softmax
    coeffs: torch.Tensor  # [B, P, K] (tanh)
    proto: torch.Tensor  # [B, H', W', K] (ReLU)
    priors: torch.Tensor  # [P, 4]
    segm: torch.Tensor  # [B, C - 1, H3, W3] semantic segmentation logits on P3


@dataclass
class SelectedDetections:
    """Padded per-batch detections before mask assembly; slot ``d`` of image ``b`` is real iff
    ``d < num_detections[b]``. Boxes are relative point form."""

    boxes: torch.Tensor  # [B, D, 4]
    scores: torch.Tensor  # [B, D]
    classes: torch.Tensor  # [B, D] 0-based, without background
    coeffs: torch.Tensor  # [B, D, K]
    num_detections: torch.Tensor  # [B]


@dataclass
class Detections:
    """Detections of one image, best first."""

    boxes: torch.Tensor  # [N, 4] int64 pixel corners x1, y1, x2, y2
    scores: torch.Tensor  # [N] float
    classes: torch.Tensor  # [N] int64, 0-based without background
    masks: torch.Tensor  # [N, H, W] bool at image size, or [N, H', W'] float probabilities (low-res)
    image_size: tuple[int, int]  # (h, w)
    boxes_relative: torch.Tensor | None = None  # [N, 4] float, relative to the image

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: str | torch.device) -> Detections:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return Detections(
            move(self.boxes),
            move(self.scores),
            move(self.classes),
            move(self.masks),
            self.image_size,
            move(self.boxes_relative),
        )

    def first(self, count: int) -> Detections:
        """The ``count`` best detections."""
        rel = self.boxes_relative
        return Detections(
            self.boxes[:count],
            self.scores[:count],
            self.classes[:count],
            self.masks[:count],
            self.image_size,
            None if rel is None else rel[:count],
        )


class GraphDetections(NamedTuple):
    """Fixed-size detections of the in-graph post-processing; slot ``d`` of image ``b`` is real iff
    ``d < num_dets[b]``. Empty slots hold a zero box, score 0, class ``-1`` and an all-zero mask."""

    num_dets: torch.Tensor  # [B] int32
    boxes: torch.Tensor  # [B, D, 4] float32, relative x1, y1, x2, y2
    scores: torch.Tensor  # [B, D] float32, best first
    classes: torch.Tensor  # [B, D] int32, 0-based without background
    masks: torch.Tensor  # [B, D, H', W'] float32 mask probabilities at prototype resolution


GRAPH_OUTPUT_NAMES: tuple[str, ...] = GraphDetections._fields
