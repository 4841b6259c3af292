"""Sparsity training for network slimming: an L1 penalty on the prunable batch-norm scales, and its statistics."""

from __future__ import annotations

import torch
from torch import nn

from ..model.prune import prunable_batchnorms


def apply_sparsity_penalty(model: nn.Module, strength: float) -> None:
    """Add ``strength * sign(gamma)`` to the gradient of every prunable BN scale (after backward)."""
    if strength <= 0:
        return
    for bn in prunable_batchnorms(model):
        if bn.weight.grad is not None:
            bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=strength)


def gamma_statistics(model: nn.Module) -> dict[str, float]:
    """Summary of |gamma| over the prunable BNs, to watch sparsity training work."""
    values = torch.cat([bn.weight.detach().abs().flatten().cpu() for bn in prunable_batchnorms(model)])
    return {
        "mean": float(values.mean()),
        "median": float(values.median()),
        "below_0.01": float((values < 0.01).float().mean()),
        "below_0.1": float((values < 0.1).float().mean()),
    }
