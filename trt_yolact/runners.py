"""Inference runners: one interface for every backend.

A runner takes a normalised ``[B,3,S,S]`` float32 batch and returns :class:`RawOutputs` on its own device,
so one post-processing serves all backends. Loading (checkpoint, ONNX, engine) is kept apart from running.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .allocator import keep_freed_memory
from .model import Yolact
from .structures import RawOutputs

PRECISIONS = ("fp32", "fp16")


class RunnerError(RuntimeError):
    """A runner that cannot be created here (backend, device or file problem)."""


class Runner(ABC):
    backend: str = ""
    precision: str = "fp32"
    max_batch: int | None = None  # None: any batch size

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def input_size(self) -> int: ...

    @abstractmethod
    def infer(self, images: torch.Tensor) -> RawOutputs:
        """Run one batch that fits ``max_batch``; outputs in float32 on :attr:`device`."""

    def __call__(self, images: torch.Tensor) -> RawOutputs:
        """Run a batch of any size, split into chunks of at most ``max_batch``."""
        images = images.to(self.device)
        if self.max_batch is None or images.shape[0] <= self.max_batch:
            return self.infer(images)
        chunks = [self.infer(part) for part in torch.split(images, self.max_batch)]
        return RawOutputs(
            loc=torch.cat([c.loc for c in chunks]),
            conf=torch.cat([c.conf for c in chunks]),
            coeffs=torch.cat([c.coeffs for c in chunks]),
            proto=torch.cat([c.proto for c in chunks]),
            priors=chunks[0].priors,
        )

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunnerError("CUDA was requested but this torch sees no GPU: use --device cpu")
    return device


class TorchRunner(Runner):
    backend = "torch"

    def __init__(
        self,
        model: Yolact,
        device: str | torch.device | None = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        reuse_freed_memory: bool = True,
    ):
        """``reuse_freed_memory``: on the CPU, keep freed memory in the process for the next call instead of
        page-faulting each call's activations in afresh (:func:`trt_yolact.allocator.keep_freed_memory`,
        process-wide; why and what it gains: :mod:`trt_yolact.allocator`).

        ``channels_last``: run in NHWC memory layout (True, the default) or NCHW (False). oneDNN's CPU
        kernels are far faster on NHWC (its NCHW 3x3 max-pooling alone took a fifth of the demo model's
        forward pass), and so are cuDNN's (yolact_base at 550 on an H200: eager 13-25 % faster, FP16 in a
        CUDA graph 1.8x at batch 8). The outputs equal the NCHW ones up to float rounding. Converts ``model``
        in place, like ``.to(device)``."""
        if precision not in PRECISIONS:
            raise RunnerError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self._device = resolve_device(device)
        if precision == "fp16" and self._device.type != "cuda":
            raise RunnerError("fp16 torch inference needs a CUDA device; use --precision fp32 on the CPU")
        self.precision = precision
        if reuse_freed_memory and self._device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(self._device).eval()
        if precision == "fp16":
            self.model = self.model.half()
        self.channels_last = channels_last
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=layout)
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_size(self) -> int:
        return self.config.max_size

    @torch.inference_mode()
    def infer(self, images: torch.Tensor) -> RawOutputs:
        images = images.half() if self.precision == "fp16" else images.float()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.model(images)
        return RawOutputs(*(t.float() for t in out)) if self.precision == "fp16" else out
