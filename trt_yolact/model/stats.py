"""What a model weighs: parameters, convolution multiply-accumulates, checkpoint bytes."""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import checkpoint_payload
from .yolact import Yolact


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_hw(model: Yolact, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """``(height, width)`` for MAC counts: the config's square input when ``input_size`` is None."""
    if input_size is None:
        return model.config.max_size, model.config.max_size
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


def conv_macs_by_module(model: Yolact, input_size: int | tuple[int, int] | None = None) -> dict[str, int]:
    """Multiply-accumulates of each Conv2d layer (by qualified name) for one image; a layer called several
    times (the shared prediction head) counts every call.

    Runs a shape-only copy of the model on the meta device, so even a 550 px ResNet-101 costs no arithmetic.
    """
    height, width = input_hw(model, input_size)
    with torch.device("meta"):
        shadow = Yolact(model.config, model.state_dict())
    macs: dict[str, int] = {}

    def hook(name: str, conv: nn.Conv2d, output: torch.Tensor) -> None:
        kh, kw = conv.kernel_size
        macs[name] = macs.get(name, 0) + output[0].numel() * (conv.in_channels // conv.groups) * kh * kw

    for name, module in shadow.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda conv, _inputs, output, name=name: hook(name, conv, output))
    with torch.no_grad():
        shadow.eval()(torch.empty(1, 3, height, width, device="meta"))
    return macs


def count_conv_macs(model: Yolact, input_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of all Conv2d layers for one image (BN, activations, resizing not counted)."""
    return sum(conv_macs_by_module(model, input_size).values())


class _ByteCounter:
    """A write-only sink that counts bytes: the size of a serialization without holding it in memory."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def checkpoint_bytes(model: Yolact) -> int:
    """Size of the file ``save_checkpoint(path, model)`` writes (fp32)."""
    counter = _ByteCounter()
    torch.save(checkpoint_payload(model), counter)
    return counter.size
