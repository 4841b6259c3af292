"""Typed data that flows between pipeline stages (model -> runner -> post-processing)."""
from __future__ import annotations

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


OUTPUT_NAMES = RawOutputs._fields


class TrainOutputs(NamedTuple):
    """What the loss needs from one training forward pass."""

    loc: torch.Tensor  # [B, P, 4]
    conf_logits: torch.Tensor  # [B, P, C] before softmax
    coeffs: torch.Tensor  # [B, P, K] (tanh)
    proto: torch.Tensor  # [B, H', W', K] (ReLU)
    priors: torch.Tensor  # [P, 4]
    segm: torch.Tensor  # [B, C - 1, H3, W3] semantic segmentation logits on P3
