"""What a ``--weights`` value names (a checkpoint, an embedded model, an ``.onnx`` or an ``.engine`` file),
opened as a runner for a backend and precision.

A checkpoint runs in torch as it is; for ONNX Runtime and TensorRT its artifacts come from the artifact chain
(:class:`~trt_yolact.deploy.artifacts.ArtifactChain`, made once per checkpoint content in a cache folder).
A deployed file runs with the backend its kind implies. Models run on the CPU unless told otherwise;
TensorRT always runs on CUDA.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace

import torch

from ..config import (
    BACKENDS,
    GRAPH_POSTPROCESS_BACKENDS,
    INT8_BACKENDS,
    POSTPROCESS_PLACES,
    PostprocessConfig,
    RuntimeOptions,
    YolactConfig,
    get_config,
)
from ..deploy.artifacts import ArtifactChain
from ..deploy.engine_format import tensorrt_unavailable_reason
from ..deploy.tensorrt_build import BuildProfile
from ..errors import BackendUnavailable, RunnerError, UsageError
from ..model.checkpoint import ModelSource
from ..runtime.base import Runner
from ..runtime.open import artifact_backend, open_artifact
from ..runtime.torch_runner import TorchRunner
from .calibration_images import int8_setup


def open_runner(
    weights: str | os.PathLike | None, options: RuntimeOptions = RuntimeOptions()
) -> tuple[Runner, YolactConfig]:
    """A runner and its model config for any ``--weights`` value (None: the default embedded model)."""
    implied = artifact_backend(weights)
    if implied is None:
        source = ModelSource.load(weights, options.config)
        return runner_for(source, options), source.config
    if options.backend not in (None, implied):
        raise UsageError(f"{weights} runs with the {implied} backend, not {options.backend}")
    runner = open_artifact(weights, options.device_for(implied))
    try:
        return runner, _artifact_config(runner, weights, options)
    except BaseException:
        runner.deactivate()
        raise


def _artifact_config(runner: Runner, weights: str | os.PathLike, options: RuntimeOptions) -> YolactConfig:
    """``--config`` or the config the artifact records, checked against what the artifact takes."""
    if options.precision not in (None, runner.precision):
        raise UsageError(f"{weights} is {runner.precision}, not {options.precision}: its precision is fixed")
    chosen = get_config(options.config) if options.config else runner.config
    if chosen is None:
        raise UsageError(f"cannot tell the model config of {weights}: pass --config NAME_OR_FILE")
    if chosen.max_size != runner.input_size:
        raise UsageError(
            f"config {chosen.name!r} expects {chosen.max_size}px inputs, {weights} takes {runner.input_size}px"
        )
    return chosen


def graph_postprocess_problem(backend: str, precision: str) -> str | None:
    """Why a checkpoint cannot run with its post-processing in the graph on ``backend`` in ``precision``,
    or None when it can."""
    if backend not in GRAPH_POSTPROCESS_BACKENDS:
        return f"the graph post-processing runs on {' and '.join(GRAPH_POSTPROCESS_BACKENDS)}, not {backend}"
    if precision == "int8" and backend != "tensorrt":
        return "the ONNX Runtime INT8 flavour holds the network only (an INT8 graph export is TensorRT's flavour)"
    return None


def runner_for(source: ModelSource, options: RuntimeOptions = RuntimeOptions()) -> Runner:
    """A runner for a checkpoint on ``options.backend`` in ``options.precision`` (with ``options.postprocess``
    "graph", over its export with the post-processing in the graph), or :class:`BackendUnavailable` saying
    why it cannot run here."""
    backend, precision = options.backend or "torch", options.precision or "fp32"
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if options.postprocess not in POSTPROCESS_PLACES:
        raise UsageError(f"post-processing is one of {', '.join(POSTPROCESS_PLACES)}, not {options.postprocess!r}")
    device = options.device_for(backend)
    if precision == "int8" and backend not in INT8_BACKENDS:
        raise UsageError(f"INT8 runs on the {' and '.join(INT8_BACKENDS)} backends, not {backend}")
    graph = PostprocessConfig() if options.postprocess == "graph" else None
    problem = graph_postprocess_problem(backend, precision) if graph is not None else None
    if problem is not None:
        raise UsageError(problem)
    if backend == "torch":
        return TorchRunner(source.model(), device, precision)
    int8 = int8_setup(options.int8, source) if precision == "int8" else None
    chain = ArtifactChain.cached(source, options.cache_dir, int8=int8)
    if backend == "onnxruntime":
        return _onnxruntime_runner(chain, precision, device, graph)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    profile = BuildProfile(1, min(4, options.max_batch), options.max_batch)
    engine = chain.engine(precision, profile, postprocess=graph)
    try:
        return open_artifact(engine.path, device)
    except RunnerError as exc:
        raise BackendUnavailable(str(exc)) from None


def _onnxruntime_runner(
    chain: ArtifactChain, precision: str, device: str, postprocess: PostprocessConfig | None
) -> Runner:
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    from ..runtime.onnxruntime_runner import cuda_provider_available

    if torch.device(device).type == "cuda" and not cuda_provider_available():
        raise BackendUnavailable("ONNX Runtime on CUDA needs the onnxruntime-gpu package and a GPU torch sees")
    return open_artifact(chain.onnx(precision, postprocess).path, device)


def backend_precisions(
    backends: tuple[str, ...], precisions: tuple[str, ...]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(the backend x precision pairs of a comparison that can exist, a line for each one left out). INT8
    exists on ONNX Runtime and TensorRT only: asked with no such backend it is a :class:`UsageError`."""
    if "int8" in precisions and not set(backends) & set(INT8_BACKENDS):
        raise UsageError(f"INT8 runs on the {' and '.join(INT8_BACKENDS)} backends: add one to --backends")
    pairs, left_out = [], []
    for backend in backends:
        for precision in precisions:
            if precision == "int8" and backend not in INT8_BACKENDS:
                left_out.append(f"{backend} int8: INT8 runs on {' and '.join(INT8_BACKENDS)} only")
            else:
                pairs.append((backend, precision))
    return pairs, left_out


def comparison_configurations(
    backends: tuple[str, ...], precisions: tuple[str, ...], places: tuple[str, ...] = ("host",)
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(the backend x precision x post-processing place triples of a comparison that can exist, host and
    graph side by side; a line for each one left out), as :func:`backend_precisions`."""
    unknown = [place for place in places if place not in POSTPROCESS_PLACES]
    if unknown or not places:
        raise UsageError(f"post-processing is one or more of {', '.join(POSTPROCESS_PLACES)}, not {list(places)}")
    pairs, left_out = backend_precisions(backends, precisions)
    triples = []
    for backend, precision in pairs:
        for place in places:
            problem = graph_postprocess_problem(backend, precision) if place == "graph" else None
            if problem is None:
                triples.append((backend, precision, place))
            else:
                left_out.append(f"{backend} {precision} graph post-processing: {problem}")
    return triples, left_out


def with_backend(options: RuntimeOptions, backend: str, precision: str, postprocess: str = "host") -> RuntimeOptions:
    """``options`` for one backend, precision and post-processing place of a comparison."""
    return replace(options, backend=backend, precision=precision, postprocess=postprocess)
