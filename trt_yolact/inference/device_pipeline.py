"""The device pipeline's parts: uploads of frame batches that overlap the inference before them, and the
stages of one batch shape captured in CUDA graphs.

Data path (CUDA): frames -> pinned host batch -> one asynchronous copy on a copy stream -> uint8 ``[B,H,W,3]``
on the GPU -> :class:`~.preprocess.FramePreprocessor` -> the runner -> :mod:`.static_postprocess`. No stage
waits for the host until the detections are split per image, so batch N+1's copy runs while batch N
computes and the three stages can be replayed from CUDA graphs. On the CPU the same code runs synchronously.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import PostprocessConfig, YolactConfig
from ..errors import BackendUnavailable
from ..runtime.base import Runner
from ..runtime.cuda_graph import CudaGraphCall
from ..runtime.torch_runner import TorchRunner
from ..structures import RawOutputs
from .preprocess import FramePreprocessor, stack_frames
from .static_postprocess import StaticDetections, postprocess_static_tensors


@dataclass
class Upload:
    """A batch of frames on its way to the device: ``frames`` may still be copying until :meth:`wait`."""

    frames: torch.Tensor  # uint8 [B, H, W, 3] on the device
    sizes: list[tuple[int, int]]
    ready: torch.cuda.Event | None = None  # recorded on the copy stream after the copy (CUDA only)

    def wait(self) -> torch.Tensor:
        """The frames, once the current stream may read them (it waits on the device, not the host)."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.frames.device)
            stream.wait_event(self.ready)
            self.frames.record_stream(stream)  # the allocator must not reuse them before this stream is done
            self.ready = None
        return self.frames


class FrameUploads:
    """Batches of same-sized BGR frames onto ``device``, one copy each. On CUDA the copy is queued on a copy
    stream from pinned memory and returns at once, so that the next batch uploads while the current one
    computes (torch's pinned-memory allocator keeps a host buffer until its copy has finished). On the CPU it
    is the stacking alone."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def start(self, images: Sequence[np.ndarray]) -> Upload:
        host = stack_frames(images, pin=self.stream is not None)
        sizes = [(int(host.shape[1]), int(host.shape[2]))] * int(host.shape[0])
        if self.stream is None:
            return Upload(host, sizes)
        with torch.cuda.stream(self.stream):
            frames = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return Upload(frames, sizes, ready)


def one_size(images: Sequence[np.ndarray]) -> bool:
    """Whether the images share one size (what one upload takes)."""
    return len({image.shape[:2] for image in images}) == 1 and len(images) > 0


class StageGraphs:
    """Pre-processing, forward and static post-processing of one frame-batch shape, each captured in its own
    CUDA graph and chained through the graphs' static tensors, so that each stage can be timed alone.
    :func:`capture_whole` captures the three in one graph instead."""

    def __init__(self, runner: Runner, config: YolactConfig, cfg: PostprocessConfig, frames_shape: tuple[int, ...]):
        if not isinstance(runner, TorchRunner):
            raise BackendUnavailable(f"CUDA graphs are captured through the torch runner, not {runner.backend}")
        frames = torch.zeros(frames_shape, dtype=torch.uint8, device=runner.device)
        image_size = (int(frames_shape[1]), int(frames_shape[2]))
        self.pre = runner.capture(FramePreprocessor(config, runner.device), (frames,))
        self.forward = runner.capture(lambda images: tuple(runner(images)), (self.pre.outputs,))
        self.post = runner.capture(
            lambda *raw: postprocess_static_tensors(RawOutputs(*raw), cfg, image_size), self.forward.outputs
        )


def capture_whole(
    runner: TorchRunner, config: YolactConfig, cfg: PostprocessConfig, frames_shape: tuple[int, ...]
) -> CudaGraphCall:
    """uint8 frames -> :class:`StaticDetections` in one CUDA graph: pre-processing, forward and static
    post-processing, full-size masks included."""
    preprocessor = FramePreprocessor(config, runner.device)
    image_size = (int(frames_shape[1]), int(frames_shape[2]))

    def frames_to_detections(frames: torch.Tensor) -> StaticDetections:
        return postprocess_static_tensors(runner(preprocessor(frames)), cfg, image_size)

    frames = torch.zeros(frames_shape, dtype=torch.uint8, device=runner.device)
    return runner.capture(frames_to_detections, (frames,))
