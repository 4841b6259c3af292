"""Images -> detections with any runner: pre-processing, inference, batched post-processing, stage timing.

The one pipeline behind predict, eval, bench, the demo, training's validation and build's checks. A runner
over an artifact with the post-processing in the graph gives detections already selected: the
post-processing stage then only finishes them per image (:mod:`~trt_yolact.inference.graph_detections`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import PostprocessConfig, YolactConfig
from ..errors import ImageError
from ..runtime.base import Runner
from ..structures import Detections, GraphDetections, RawOutputs
from .graph_detections import check_graph_settings, graph_outputs, graph_to_detections
from .images import read_image
from .postprocess import postprocess
from .preprocess import preprocess


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
class Predictor:
    """Images (BGR uint8, any sizes) -> one :class:`Detections` per image, with any runner.

    ``times`` sums the stage timings of every call. A runner with the post-processing in its graph must have
    been exported with the selection settings of ``postprocess_config`` (a :class:`UsageError` otherwise).
    """

    runner: Runner
    config: YolactConfig
    postprocess_config: PostprocessConfig = field(default_factory=PostprocessConfig)
    times: StageTimes = field(default_factory=StageTimes)

    def __post_init__(self) -> None:
        if self.runner.postprocess == "graph":
            check_graph_settings(self.runner.postprocess_config, self.postprocess_config, str(self.runner))

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return self.predict(images).detections

    def predict(self, images: Sequence[np.ndarray]) -> Prediction:
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
            detections = postprocess(raw, sizes, self.postprocess_config)
        else:
            detections = graph_to_detections(graph, sizes, self.postprocess_config)
        runner.synchronize()
        times = StageTimes(after_pre - start, after_infer - after_pre, clock() - after_infer, len(sizes))
        self.times.add(times)
        return Prediction(detections, raw, times, graph)


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
