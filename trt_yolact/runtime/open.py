"""Open a deployed artifact file (``.onnx`` or ``.engine``) with the runner its kind implies."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import YolactConfig
from ..deploy.engine_format import read_sidecar
from ..deploy.onnx_format import read_onnx_metadata
from ..errors import BackendUnavailable, RunnerError, TrtYolactError
from .base import Runner

ARTIFACT_BACKENDS = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


def artifact_backend(path: str | os.PathLike | None) -> str | None:
    """The backend that runs an artifact file, from its suffix; None for anything else (a checkpoint)."""
    return ARTIFACT_BACKENDS.get(Path(path).suffix.lower()) if path else None


def engine_config(engine_path: str | os.PathLike) -> YolactConfig | None:
    """The model config an engine's sidecar records, or that of the ONNX export it was built from when
    that file lies beside it; None when neither tells."""
    sidecar = read_sidecar(engine_path) or {}
    if isinstance(sidecar.get("config"), dict):
        try:
            return YolactConfig.from_dict(sidecar["config"])
        except TrtYolactError:
            return None
    onnx_path = Path(engine_path).parent / str(sidecar.get("onnx_file", ""))
    if not sidecar.get("onnx_file") or not onnx_path.is_file():
        return None
    try:
        return read_onnx_metadata(onnx_path).get("config")
    except TrtYolactError:
        return None


def open_artifact(path: str | os.PathLike, device: str | torch.device | None = None) -> Runner:
    """A runner for an ``.onnx`` file (ONNX Runtime, on the CPU unless ``device`` says otherwise) or an
    ``.engine``/``.plan`` file (TensorRT, on CUDA); its :attr:`~Runner.config` is set when the file tells."""
    backend = artifact_backend(path)
    if backend is None:
        raise RunnerError(f"{path} is not a deployed artifact (.onnx, .engine or .plan)")
    if not Path(path).is_file():
        raise RunnerError(f"{path} does not exist")
    try:  # each backend's module is imported only when asked for
        if backend == "onnxruntime":
            from .onnxruntime_runner import OnnxRuntimeRunner as runner_class
        else:
            from .tensorrt_runner import TensorRTRunner as runner_class
    except ImportError as exc:
        raise BackendUnavailable(f"the {backend} backend is not available in this installation ({exc})") from None
    if backend == "onnxruntime":
        return runner_class(path, device=device or "cpu")
    runner = runner_class(path, device=device or "cuda")
    runner.config = engine_config(path)
    return runner
