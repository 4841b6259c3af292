"""Sparsity training for network slimming: an L1 penalty on the batch-norm scales that rank channels and,
with scope ``all``, a group-lasso penalty on the BN-free channel groups; and their statistics."""

from __future__ import annotations

import torch
from torch import nn

from ..model.channel_groups import ChannelGroup
from ..model.prune import group_magnitude, magnitude_groups, prunable_batchnorms

NORM_FLOOR = 1e-12  # a channel whose weights are all zero gets no group-lasso push (its gradient is undefined)


def apply_sparsity_penalty(
    model: nn.Module, strength: float, scope: str = "internal", neck_strength: float | None = None
) -> None:
    """After backward: add ``strength * sign(gamma)`` to the gradient of every BN scale that ranks channels
    in ``scope``; with scope ``all`` also ``neck_strength * theta_c / ||theta_c||`` (default ``strength``) to
    the weights ``theta_c`` of every channel of a BN-free group (its producers' rows and biases, its
    consumers' columns): group lasso."""
    if strength > 0:
        for bn in prunable_batchnorms(model, scope):
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=strength)
    neck_strength = strength if neck_strength is None else neck_strength
    if scope == "all" and neck_strength > 0:
        for group in magnitude_groups(model, scope):
            _add_group_lasso(model, group, neck_strength)


@torch.no_grad()
def _add_group_lasso(model: nn.Module, group: ChannelGroup, strength: float) -> None:
    norms = group_magnitude(model, group, "l2")
    scale = torch.where(norms > NORM_FLOOR, strength / norms.clamp_min(NORM_FLOOR), torch.zeros_like(norms))
    for producer in group.producers:
        conv = model.get_submodule(producer.conv)
        per_row = scale.repeat(producer.repeat).to(conv.weight)
        for param in (conv.weight, conv.bias):
            if param is not None and param.grad is not None:
                param.grad.add_(param.detach() * per_row.view(-1, *[1] * (param.dim() - 1)))
    for consumer in group.consumers:
        weight = model.get_submodule(consumer.conv).weight
        if weight.grad is not None:
            weight.grad.add_(weight.detach() * scale.to(weight).view(1, -1, 1, 1))


def gamma_statistics(model: nn.Module, scope: str = "internal") -> dict[str, float]:
    """Summary of |gamma| over the BNs that rank channels in ``scope`` and, with scope ``all``, of the
    BN-free groups' channel norms relative to their group's mean, to watch sparsity training work."""
    values = torch.cat([bn.weight.detach().abs().flatten().cpu() for bn in prunable_batchnorms(model, scope)])
    stats = {
        "mean": float(values.mean()),
        "median": float(values.median()),
        "below_0.01": float((values < 0.01).float().mean()),
        "below_0.1": float((values < 0.1).float().mean()),
    }
    if scope == "all":
        relative = []
        for group in magnitude_groups(model, scope):
            norms = group_magnitude(model, group, "l2")
            relative.append(norms / norms.mean().clamp_min(NORM_FLOOR))
        norms = torch.cat(relative).float()
        stats.update(
            {
                "group_norm_median": float(norms.median()),
                "group_norm_below_0.1": float((norms < 0.1).float().mean()),
                "group_norm_below_0.3": float((norms < 0.3).float().mean()),
            }
        )
    return stats
