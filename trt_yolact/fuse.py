"""Fold every batch norm into the conv before it (inference only).

    python -m trt_yolact.fuse --weights CKPT [--config NAME] --out FUSED.pth

In eval mode ``BN(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, which is one
conv with weight ``s * W`` and bias ``s * (b - mean) + beta``. The conv gains a bias, the BN becomes
``nn.Identity`` (so Sequential indices, hence checkpoint names, stay put), and its keys leave the state dict.
A fused checkpoint is marked ``fused=True`` and has conv biases where the BN keys would be;
:func:`load_fused_state` builds the model, fuses it, then loads such a state dict strictly.
"""
from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    _describe_mismatch,
    build_model,
    choose_config,
    clean_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from .config import YolactConfig
from .model import Bottleneck, ResNetBackbone, Yolact

# Small run-metadata carried from the input checkpoint into the fused one (never optimizer state).
CARRIED_EXTRAS = ("iteration", "pruning")


class FuseError(ValueError):
    """A model or checkpoint that cannot be fused."""


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


def load_fused_state(
    config: YolactConfig, state_dict: Mapping[str, torch.Tensor], source: str = "fused checkpoint"
) -> Yolact:
    """Build the model for ``config`` with the widths of ``state_dict``, fuse it, load strictly (eval mode)."""
    state_dict = clean_state_dict(state_dict, config)
    model = fuse_model(Yolact(config, state_dict), inplace=True)
    problem = _describe_mismatch(model.state_dict(), state_dict, config, source)
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def max_output_difference(a: Yolact, b: Yolact, size: int, seed: int = 0) -> float:
    """Largest absolute difference of the raw outputs of two models on one random image."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 3, size, size, generator=generator)
    with torch.no_grad():
        out_a, out_b = a(images), b(images)
    return max(float((x - y).abs().max()) for x, y in zip(out_a, out_b))


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.fuse", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint file or embedded model name (yolact_shapes)")
    parser.add_argument("--config", default=None, help="official config name or .yaml/.json file (default: stored)")
    parser.add_argument("--out", required=True, help="fused checkpoint to write")
    parser.add_argument("--half", action="store_true", help="store tensors as fp16 (half the file; loads as fp32)")
    parser.add_argument(
        "--check-size", type=int, default=None,
        help="compare raw outputs before/after on a random image of this size (default: the config's; 0 = skip)",
    )  # fmt: skip
    return parser


@torch.no_grad()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check_size is not None and args.check_size != 0 and args.check_size < 32:
            raise FuseError(f"--check-size must be 0 (skip) or at least 32, got {args.check_size}")
        checkpoint = read_checkpoint(args.weights)
        if checkpoint.extra.get("fused") or is_fused_state_dict(checkpoint.state_dict):
            raise FuseError(f"{checkpoint.path} is already fused")
        if checkpoint.path.resolve() == Path(args.out).resolve():
            raise FuseError("--out is the input checkpoint; write the fused model to another file")
        config = choose_config(checkpoint, args.config)
        model = build_model(checkpoint.state_dict, config, source=str(checkpoint.path))
        fused = fuse_model(model)
        size = config.max_size if args.check_size is None else args.check_size
        difference = max_output_difference(model, fused, size) if size > 0 else None
        extras = {k: checkpoint.extra[k] for k in CARRIED_EXTRAS if k in checkpoint.extra}
        written = save_checkpoint(args.out, fused, half=args.half, fused=True, **extras)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folded = sum(1 for _ in conv_bn_pairs(model))
    check = f"; raw outputs differ by at most {difference:.2e} at {size}x{size}" if difference is not None else ""
    print(f"folded {folded} batch norms -> {written} ({written.stat().st_size / 2**20:.1f} MiB){check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
