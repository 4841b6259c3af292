"""Fold every batch norm into the conv before it (inference only).

In eval mode ``BN(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, which is one
conv with weight ``s * W`` and bias ``s * (b - mean) + beta``. The conv gains a bias, the BN becomes
``nn.Identity`` (so Sequential indices, hence checkpoint names, stay put), and its keys leave the state dict.
A fused checkpoint has conv biases where the BN keys would be; :func:`is_fused_state_dict` recognises it and
:func:`trt_yolact.model.checkpoint.build_model` loads it into a fused model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import FuseError
from .yolact import Bottleneck, ResNetBackbone, Yolact


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names where the BN normalises exactly that conv's output.

    Named by data flow, not registration order: the stem and bottleneck pairs explicitly, and any
    Sequential's adjacent ``Conv2d, BatchNorm2d`` (ResNet downsample, every DarkNet conv).
    """
    pairs = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, ResNetBackbone):
            pairs.append((f"{dot}conv1", f"{dot}bn1"))
        elif isinstance(module, Bottleneck):
            pairs.extend((f"{dot}conv{i}", f"{dot}bn{i}") for i in (1, 2, 3))
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    pairs.append((f"{dot}{conv_name}", f"{dot}{bn_name}"))
    modules = dict(model.named_modules())
    return [(c, b) for c, b in pairs if isinstance(modules[b], nn.BatchNorm2d)]


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Give ``conv`` the weight and bias of ``bn(conv(x))`` in eval mode (computed in float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise FuseError("a batch norm without running statistics cannot be folded")
    weight = conv.weight.double()
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        new_bias = new_bias + bn.bias.double()
    dtype = conv.weight.dtype
    conv.weight.copy_((weight * scale.view(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=conv.weight.requires_grad)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def fuse_model(model: Yolact, inplace: bool = False) -> Yolact:
    """Fold every BN into its conv; returns the fused model in eval mode (a copy unless ``inplace``)."""
    fused = model if inplace else copy.deepcopy(model)
    fused.eval()
    modules = dict(fused.named_modules())
    for conv_name, bn_name in conv_bn_pairs(fused):
        fold_batchnorm(modules[conv_name], modules[bn_name])
        _set_module(fused, bn_name, nn.Identity())
    left = [name for name, module in fused.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise FuseError(f"batch norms without a conv to fold into: {', '.join(left[:5])}")
    return fused


def is_fused_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when the backbone convs carry biases and the backbone has no BN keys (a fused checkpoint).

    Unfused YOLACT backbones have a BN after every conv and no conv biases; the FPN and heads, which always
    have biases, are ignored.
    """
    backbone = [key for key in state_dict if key.startswith("backbone.")]
    if any(key.endswith(".running_var") for key in backbone):
        return False
    return any(
        key.endswith(".bias") and state_dict.get(key[: -len("bias")] + "weight", torch.empty(0)).dim() == 4
        for key in backbone
    )


FP16_MAX = 65504.0  # the largest finite float16: a weight beyond it is stored as inf


def fp16_overflows(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating tensors holding a finite value that float16 cannot hold (it would become inf)."""
    return [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and bool((tensor.isfinite() & (tensor.abs() > FP16_MAX)).any())
    ]


def compare_outputs(a: Yolact, b: Yolact, size: int, seed: int = 0) -> tuple[float, list[str]]:
    """(largest absolute difference of the raw outputs of two models on one random image, the names of the
    outputs of ``b`` holding NaN or inf). A NaN anywhere makes the difference NaN: never skipped by max."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 3, size, size, generator=generator)
    with torch.no_grad():
        out_a, out_b = a(images), b(images)
    broken = [name for name, y in zip(out_b._fields, out_b) if not bool(y.isfinite().all())]
    # torch's max propagates NaN (Python's max over floats would skip it).
    return float(torch.stack([(x - y).abs().max() for x, y in zip(out_a, out_b)]).max()), broken


def max_output_difference(a: Yolact, b: Yolact, size: int, seed: int = 0) -> float:
    """Largest absolute difference of the raw outputs of two models on one random image (NaN if any is)."""
    return compare_outputs(a, b, size, seed)[0]
