"""Run a YOLACT ``nn.Module`` in eager PyTorch, on the CPU or a CUDA GPU, in FP32 or FP16; on a GPU, the
forward pass (alone or with the stages around it) can be captured in a CUDA graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..config import INT8_BACKENDS, PRECISIONS
from ..errors import BackendUnavailable, RunnerError, UsageError
from .allocator import keep_freed_memory
from .base import Runner, resolve_device
from .cuda_graph import CudaGraphCall


class TorchRunner(Runner):
    """Runner over a model in memory (the model is moved and converted in place, like ``.to(device)``).

    ``channels_last``: run in NHWC memory layout (the default) or NCHW. oneDNN's and cuDNN's kernels are both
    faster on NHWC for this network; the outputs equal the NCHW ones up to float rounding.
    ``reuse_freed_memory``: on the CPU, keep freed memory in the process for the next call instead of
    page-faulting each call's activations in afresh (process-wide, :mod:`trt_yolact.runtime.allocator`).
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        reuse_freed_memory: bool = True,
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise RunnerError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8":
            raise UsageError(
                f"INT8 runs on the {' and '.join(INT8_BACKENDS)} backends, not torch: pass --backend onnxruntime"
            )
        self._device = resolve_device(device)
        if precision == "fp16" and self._device.type != "cuda":
            raise BackendUnavailable("torch fp16 needs a CUDA GPU; use --precision fp32 on the CPU")
        self.precision = precision
        self.input_dtype = torch.float16 if precision == "fp16" else torch.float32
        if reuse_freed_memory and self._device.type == "cpu":
            keep_freed_memory()
        self.channels_last = channels_last
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self._device).eval().to(dtype=self.input_dtype, memory_format=layout)
        self.config = model.config
        self._input_size = model.config.max_size
        self.activate()

    def __repr__(self) -> str:
        return f"TorchRunner({self.config.name!r}, device={str(self._device)!r}, precision={self.precision})"

    @torch.inference_mode()
    def _infer(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)._asdict()

    def capture(self, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> CudaGraphCall:
        """``fn(*inputs)`` (typically a call of this runner, with stages before and after it) captured in a
        CUDA graph on this runner's GPU; ``inputs`` become the graph's static inputs. ``fn`` must keep its
        shapes and never wait for the host (the static post-processing qualifies, the dynamic one does not).
        """
        if self._device.type != "cuda":
            raise BackendUnavailable(f"CUDA graphs need a CUDA GPU; {self} runs on {self._device}")
        return CudaGraphCall(fn, inputs)
