"""What a ``--weights`` value names (a checkpoint, an embedded model, an ``.onnx`` or an ``.engine`` file),
opened as a runner for a backend and precision.

A checkpoint runs in torch as it is; for ONNX Runtime and TensorRT its artifacts come from the artifact chain
(:class:`~trt_yolact.deploy.artifacts.ArtifactChain`, made once per checkpoint content in a cache folder).
A deployed file runs with the backend its kind implies.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..config import BACKENDS, PRECISIONS, YolactConfig, get_config
from ..deploy.artifacts import ArtifactChain
from ..deploy.engine_format import tensorrt_unavailable_reason
from ..deploy.tensorrt_build import BuildProfile
from ..errors import BackendUnavailable, RunnerError, UsageError
from ..model.checkpoint import ModelSource
from ..runtime.base import Runner, resolve_device
from ..runtime.open import artifact_backend, open_artifact
from ..runtime.torch_runner import TorchRunner

DEFAULT_CACHE = "export/cache"


def open_runner(
    weights: str | os.PathLike | None,
    backend: str | None = None,
    precision: str = "fp32",
    config: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    max_batch: int = 8,
) -> tuple[Runner, YolactConfig]:
    """A runner and its model config for any ``--weights`` value (None: the default embedded model).

    ``backend``: None runs a checkpoint in torch and a deployed file with the backend its kind implies.
    ``max_batch``: the largest batch of a TensorRT engine made for a checkpoint.
    """
    implied = artifact_backend(weights)
    if implied is None:
        source = ModelSource.load(weights, config)
        return runner_for(source, backend or "torch", precision, device, cache_dir, max_batch), source.config
    if backend not in (None, implied):
        raise UsageError(f"{weights} runs with the {implied} backend, not {backend}")
    runner = open_artifact(weights, device)
    try:
        return runner, _artifact_config(runner, weights, config)
    except BaseException:
        runner.deactivate()
        raise


def _artifact_config(runner: Runner, weights: str | os.PathLike, config: str | os.PathLike | None) -> YolactConfig:
    """``--config`` or the config the artifact records, checked against what the artifact takes."""
    if getattr(runner, "postprocess", "none") != "none":
        raise UsageError(f"{weights} has the post-processing in the graph; use an export with --postprocess none")
    chosen = get_config(config) if config else runner.config
    if chosen is None:
        raise UsageError(f"cannot tell the model config of {weights}: pass --config NAME_OR_FILE")
    if chosen.max_size != runner.input_size:
        raise UsageError(
            f"config {chosen.name!r} expects {chosen.max_size}px inputs, {weights} takes {runner.input_size}px"
        )
    return chosen


def runner_for(
    source: ModelSource,
    backend: str,
    precision: str,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    max_batch: int = 8,
) -> Runner:
    """A runner for a checkpoint on ``backend`` in ``precision``, or :class:`BackendUnavailable` saying why."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if backend == "torch":
        chosen = resolve_device(device)
        if precision == "fp16" and chosen.type != "cuda":
            raise BackendUnavailable("torch fp16 needs a CUDA GPU")
        return TorchRunner(source.model(), chosen, precision)
    chain = ArtifactChain.cached(source, Path(cache_dir))
    if backend == "onnxruntime":
        return _onnxruntime_runner(chain, precision, device)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    engine = chain.engine(precision, BuildProfile(1, min(4, max_batch), max_batch))
    try:
        return open_artifact(engine.path, device)
    except RunnerError as exc:
        raise BackendUnavailable(str(exc)) from None


def _onnxruntime_runner(chain: ArtifactChain, precision: str, device: str | torch.device | None) -> Runner:
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    from ..runtime.onnxruntime_runner import cuda_provider_available

    on_gpu = cuda_provider_available()
    if device is None:
        device = "cuda" if on_gpu else "cpu"
    elif torch.device(device).type == "cuda" and not on_gpu:
        raise BackendUnavailable("ONNX Runtime on CUDA needs the onnxruntime-gpu package and a GPU torch sees")
    return open_artifact(chain.onnx(precision).path, device)
