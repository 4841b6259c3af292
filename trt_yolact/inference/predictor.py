"""Images -> detections with any runner: pre-processing, inference, batched post-processing, stage timing.

The one pipeline behind predict, eval, bench, the demo, training's validation and build's checks. A runner
over an artifact with the post-processing in the graph gives detections already selected: the
post-processing stage then only finishes them per image (:mod:`~trt_yolact.inference.graph_detections`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import PostprocessConfig, YolactConfig
from ..errors import BackendUnavailable, ImageError, UsageError
from ..runtime.base import Runner
from ..runtime.torch_runner import TorchRunner
from ..structures import Detections, GraphDetections, RawOutputs
from .device_pipeline import FrameUploads, StageGraphs, Upload, one_size
from .graph_detections import check_graph_settings, graph_outputs, graph_to_detections
from .images import read_image
from .mask_memory import MaskMemory
from .postprocess import postprocess
from .preprocess import FramePreprocessor, preprocess
from .static_postprocess import StaticDetections, postprocess_static_tensors, split_detections

# How a batch goes through: "dynamic" is the reference (images stacked per size group, converted and resized on
# the runner's device, post-processing with data-dependent shapes); "static" uploads the uint8 frames in one
# copy, pre-processes them on the device in four kernels and post-processes with static shapes (the same
# detections, no host synchronisation before the split);
# "graph" replays the static stages from CUDA graphs (torch runner on a GPU). Batches of mixed image sizes
# always take the dynamic path.
PIPELINES = ("dynamic", "static", "graph")


@dataclass
class StageTimes:
    """Seconds spent per stage (device work synchronised before each reading), summed over calls."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    images: int = 0

    def add(self, other: StageTimes) -> None:
        self.preprocess += other.preprocess
        self.inference += other.inference
        self.postprocess += other.postprocess
        self.images += other.images

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.postprocess

    def per_image_ms(self) -> dict[str, float]:
        count = max(self.images, 1)
        stages = {"pre": self.preprocess, "infer": self.inference, "post": self.postprocess, "total": self.total}
        return {name: 1000 * seconds / count for name, seconds in stages.items()}


@dataclass
class Prediction:
    """What one call produced: the detections, the outputs they came from (the raw outputs, or those of the
    graph post-processing), and the call's timing."""

    detections: list[Detections]
    raw: RawOutputs | None
    times: StageTimes
    graph: GraphDetections | None = None


@dataclass
class InFlight:
    """A batch whose pre-processing, inference and static post-processing are queued on the device."""

    sizes: list[tuple[int, int]]
    raw: RawOutputs | None  # in the graph pipeline, the forward graph's outputs: the next replay rewrites them
    static: StaticDetections | None
    times: StageTimes
    graph: GraphDetections | None = None  # instead of raw and static: a runner with the post-processing inside


@dataclass
class Predictor:
    """Images (BGR uint8, any sizes) -> one :class:`Detections` per image, with any runner.

    ``times`` sums the stage timings of every call. ``pipeline``: one of :data:`PIPELINES`; every one gives
    the same detections. A runner with the post-processing in its graph must have been exported with the
    selection settings of ``postprocess_config`` (a :class:`UsageError` otherwise); its detections are finished
    per image (:mod:`~trt_yolact.inference.graph_detections`) in every pipeline.
    """

    runner: Runner
    config: YolactConfig
    postprocess_config: PostprocessConfig = field(default_factory=PostprocessConfig)
    times: StageTimes = field(default_factory=StageTimes)
    pipeline: str = "dynamic"
    _uploads: FrameUploads | None = field(default=None, init=False, repr=False)
    _preprocessor: FramePreprocessor | None = field(default=None, init=False, repr=False)
    _graphs: dict[tuple[int, ...], StageGraphs] = field(default_factory=dict, init=False, repr=False)
    _mask_memory: MaskMemory = field(default_factory=MaskMemory, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise UsageError(f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if self.pipeline == "graph" and not (
            isinstance(self.runner, TorchRunner) and self.runner.device.type == "cuda"
        ):
            raise BackendUnavailable(f"the graph pipeline needs the torch runner on a CUDA GPU, not {self.runner}")
        if self.runner.postprocess == "graph":
            check_graph_settings(self.runner.postprocess_config, self.postprocess_config, str(self.runner))

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return self.predict(images).detections

    def predict(self, images: Sequence[np.ndarray]) -> Prediction:
        if self.pipeline == "dynamic" or not one_size(images):
            return self._predict_dynamic(images)
        start = time.perf_counter()
        return self.finish(self.launch(self.upload(images), started=start))

    def upload(self, images: Sequence[np.ndarray]) -> Upload:
        """Start copying a batch of same-sized frames to the runner's device (asynchronous on CUDA)."""
        if self._uploads is None:
            self._uploads = FrameUploads(self.runner.device)
        return self._uploads.start(images)

    def launch(self, upload: Upload, synchronize: bool = True, started: float | None = None) -> InFlight:
        """Queue an uploaded batch's pre-processing, inference and static post-processing. Stage times wait
        for the device unless ``synchronize`` is False (then on a GPU they are launch times; nothing waits,
        so the next upload overlaps this batch's work). ``started``: when its upload began (counted as
        pre-processing)."""
        clock = time.perf_counter
        sync = self.runner.synchronize if synchronize else lambda: None
        start = clock() if started is None else started
        frames = upload.wait()
        if self.pipeline == "graph":
            return self._launch_graphs(frames, upload.sizes, start, sync)
        if self._preprocessor is None:
            self._preprocessor = FramePreprocessor(self.config, self.runner.device)
        batch = self._preprocessor(frames)
        sync()
        after_pre = clock()
        if self.runner.postprocess == "graph":  # selected in the graph: finish() completes them
            graph = graph_outputs(self.runner.run(batch))
            sync()
            times = StageTimes(after_pre - start, clock() - after_pre, 0.0, len(upload.sizes))
            return InFlight(upload.sizes, None, None, times, graph)
        raw = self.runner(batch)
        sync()
        after_infer = clock()
        # One resize of every slot on a GPU (as the dynamic path's one resize per image); the CPU keeps the
        # windowed upsampling of the real masks, in split_detections.
        image_size = upload.sizes[0] if raw.proto.device.type == "cuda" else None
        static = postprocess_static_tensors(raw, self.postprocess_config, image_size)
        times = StageTimes(after_pre - start, after_infer - after_pre, clock() - after_infer, len(upload.sizes))
        return InFlight(upload.sizes, raw, static, times)

    def _launch_graphs(
        self, frames: torch.Tensor, sizes: list[tuple[int, int]], start: float, sync: Callable[[], None]
    ) -> InFlight:
        """:meth:`launch` in the graph pipeline: the three stages replayed from their CUDA graphs."""
        clock = time.perf_counter
        graphs = self._stage_graphs(tuple(frames.shape))
        graphs.pre(frames)
        sync()
        after_pre = clock()
        raw = RawOutputs(*graphs.forward())
        sync()
        after_infer = clock()
        static = graphs.post()
        times = StageTimes(after_pre - start, after_infer - after_pre, clock() - after_infer, len(sizes))
        return InFlight(sizes, raw, static, times)

    def finish(self, batch: InFlight) -> Prediction:
        """Wait for a launched batch and split its detections per image."""
        start = time.perf_counter()
        if batch.graph is not None:
            detections = graph_to_detections(batch.graph, batch.sizes, self.postprocess_config, self._mask_memory)
        else:
            detections = split_detections(batch.static, batch.sizes, self.postprocess_config, self._mask_memory)
        if self.pipeline == "graph":  # views of the graphs' outputs, which the next replay rewrites: copy them
            detections = [_owned(d) for d in detections]
        self.runner.synchronize()
        batch.times.postprocess += time.perf_counter() - start
        self.times.add(batch.times)
        return Prediction(detections, batch.raw, batch.times, batch.graph)

    def _stage_graphs(self, frames_shape: tuple[int, ...]) -> StageGraphs:
        if frames_shape not in self._graphs:
            self._graphs[frames_shape] = StageGraphs(self.runner, self.config, self.postprocess_config, frames_shape)
        return self._graphs[frames_shape]

    def _predict_dynamic(self, images: Sequence[np.ndarray]) -> Prediction:
        clock, runner = time.perf_counter, self.runner
        start = clock()
        batch, sizes = preprocess(images, self.config, runner.device)
        runner.synchronize()
        after_pre = clock()
        graph = graph_outputs(runner.run(batch)) if runner.postprocess == "graph" else None
        raw = runner(batch) if graph is None else None
        runner.synchronize()
        after_infer = clock()
        if graph is None:
            detections = postprocess(raw, sizes, self.postprocess_config, self._mask_memory)
        else:
            detections = graph_to_detections(graph, sizes, self.postprocess_config, self._mask_memory)
        runner.synchronize()
        times = StageTimes(after_pre - start, after_infer - after_pre, clock() - after_infer, len(sizes))
        self.times.add(times)
        return Prediction(detections, raw, times, graph)


def _owned(detections: Detections) -> Detections:
    """``detections`` in memory of their own."""
    rel = detections.boxes_relative
    return Detections(
        detections.boxes.clone(),
        detections.scores.clone(),
        detections.classes.clone(),
        detections.masks.clone(),
        detections.image_size,
        None if rel is None else rel.clone(),
    )


@dataclass
class ImageResult:
    """The detections of one image file, or why it could not be read."""

    path: Path
    index: int  # position in the list of paths
    image: np.ndarray | None = None
    detections: Detections | None = None
    error: str | None = None  # the file could not be read: no image, no detections


def predict_paths(predictor: Predictor, paths: Sequence[Path], batch_size: int) -> Iterator[ImageResult]:
    """One result per path, in order, predicted ``batch_size`` files at a time; an unreadable file's result
    carries the error instead."""
    for start in range(0, len(paths), batch_size):
        results: list[ImageResult] = []
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                results.append(ImageResult(paths[index], index, image=read_image(paths[index])))
            except ImageError as exc:
                results.append(ImageResult(paths[index], index, error=str(exc)))
        readable = [r for r in results if r.error is None]
        if readable:
            for result, detections in zip(readable, predictor([r.image for r in readable])):
                result.detections = detections
        yield from results


def confident(detections: Detections, threshold: float) -> Detections:
    """The detections scoring at least ``threshold`` (they are sorted best first)."""
    return detections.first(int((detections.scores >= threshold).sum()))
