"""A function of fixed-shape CUDA tensors captured once in a CUDA graph and replayed.

A graph replays every kernel of the captured call in one launch: no per-op Python or launch overhead, which
bounds small-batch inference and a post-processing of many small kernels on a GPU. The price is static
shapes and no host synchronisation inside the function, and its outputs are the same tensors on every
replay (the next replay overwrites them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import BackendUnavailable

WARMUP_CALLS = 3  # eager calls before the capture: lazy initialisation and allocator growth happen there


class CudaGraphCall:
    """``fn(*inputs)`` captured in a CUDA graph, under inference mode.

    ``inputs`` are the graph's static input tensors (used as they are, not copied: the output of another
    graph can feed this one). Calling it copies any argument that is not already the static input into it,
    replays the graph on the current stream and returns :attr:`outputs`, the object ``fn`` returned during
    the capture, which every replay rewrites.
    """

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[torch.Tensor], warmup: int = WARMUP_CALLS):
        if not inputs or any(not isinstance(t, torch.Tensor) or t.device.type != "cuda" for t in inputs):
            raise BackendUnavailable("a CUDA graph needs its inputs on a CUDA GPU")
        self.inputs = tuple(inputs)
        device = self.inputs[0].device
        side = torch.cuda.Stream(device)  # the warm-up runs off the main stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *args: torch.Tensor) -> Any:
        for static, arg in zip(self.inputs, args):
            if arg is not static:
                static.copy_(arg, non_blocking=True)
        self.graph.replay()
        return self.outputs
