"""Model x backend x precision -> a runner: the one place that knows how each backend is made.

Used by ``eval`` (the accuracy comparison) and ``bench``. ONNX models are exported on the fly into a cache
folder when the backend needs one; a backend that cannot run here is reported with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import read_checkpoint, build_model, choose_config
from .config import YolactConfig
from .runners import Runner, RunnerError, TorchRunner

BACKENDS = ("torch", "onnxruntime", "tensorrt")


class BackendUnavailable(RuntimeError):
    """This backend/precision cannot run on this machine; the message says why."""


@dataclass
class ModelSource:
    """A checkpoint (path or embedded name), its display name and what it weighs."""

    weights: str
    name: str
    path: Path
    config: YolactConfig
    file_bytes: int

    @classmethod
    def load(cls, weights: str, config: str | None = None) -> "ModelSource":
        checkpoint = read_checkpoint(weights)
        name = Path(weights).stem if Path(weights).suffix else str(weights)
        return cls(weights, name, checkpoint.path, choose_config(checkpoint, config), checkpoint.path.stat().st_size)

    def model(self):
        checkpoint = read_checkpoint(self.weights)
        return build_model(checkpoint.state_dict, self.config, source=str(self.path))


def _onnx_for(source: ModelSource, precision: str, cache_dir: Path) -> Path:
    """The (fused) FP32 or FP16 ONNX of ``source``, exported once per checkpoint content."""
    from .export import convert_fp16, export_onnx
    from .files import sha256_file
    from .fuse import fuse_model, is_fused_state_dict

    digest = sha256_file(source.path)[:12]
    fp32 = cache_dir / f"{source.name}-{digest}.onnx"
    if not fp32.is_file():
        model = source.model()
        if not is_fused_state_dict(model.state_dict()):
            model = fuse_model(model)
        export_onnx(model, fp32, source_checkpoint=source.path)
    if precision == "fp32":
        return fp32
    fp16 = cache_dir / f"{source.name}-{digest}.fp16.onnx"
    if not fp16.is_file():
        convert_fp16(fp32, fp16)
    return fp16


def make_runner(
    source: ModelSource,
    backend: str,
    precision: str,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike = "export/cache",
    max_batch: int = 8,
) -> Runner:
    """A runner for one model x backend x precision, or :class:`BackendUnavailable` with the reason."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {BACKENDS}")
    cache_dir = Path(cache_dir)
    if backend == "torch":
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision == "fp16" and device.type != "cuda":
            raise BackendUnavailable("torch fp16 needs a CUDA GPU")
        return TorchRunner(source.model(), device, precision)
    if backend == "onnxruntime":
        try:
            from .onnxruntime_runner import OnnxRuntimeRunner
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from None
        cache_dir.mkdir(parents=True, exist_ok=True)
        return OnnxRuntimeRunner(_onnx_for(source, precision, cache_dir))
    # TensorRT: an engine built from the matching ONNX (strongly typed FP16 comes from the FP16 ONNX).
    from .engine import BuildProfile, TensorRTUnavailable, build_engine, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU and torch sees none")
    from .tensorrt_runner import TensorRTRunner

    cache_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = _onnx_for(source, precision, cache_dir)
    profile = BuildProfile(1, min(4, max_batch), max_batch)
    result = build_engine(onnx_path, cache_dir / f"{onnx_path.stem}.engine", profile, precision=precision)
    try:
        return TensorRTRunner(result.engine_path)
    except RunnerError as exc:
        raise BackendUnavailable(str(exc)) from None


DEPLOYED_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


def engine_config(engine_path: str | os.PathLike) -> YolactConfig | None:
    """The config recorded in the ONNX export an engine was built from, when that file lies beside it."""
    try:
        from .engine import read_sidecar
        from .export import read_onnx_metadata

        onnx_name = (read_sidecar(engine_path) or {}).get("onnx_file")
        onnx_path = Path(engine_path).parent / str(onnx_name)
        return read_onnx_metadata(onnx_path).get("config") if onnx_name and onnx_path.is_file() else None
    except Exception:  # noqa: BLE001 - no usable metadata: the caller asks for --config
        return None


def open_runner(
    weights: str | None,
    backend: str | None = None,
    precision: str = "fp32",
    config: str | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike = "export/cache",
) -> tuple[Runner, YolactConfig]:
    """A runner and its config for a checkpoint (any backend; ONNX/engines made as needed), an ``.onnx``
    file (ONNX Runtime) or an ``.engine`` file (TensorRT)."""
    from .config import get_config

    suffix = Path(weights).suffix.lower() if weights else ""
    implied = DEPLOYED_SUFFIXES.get(suffix)
    if implied is None:
        source = ModelSource.load(weights or "yolact_shapes", config)
        return make_runner(source, backend or "torch", precision, device, cache_dir), source.config
    if backend not in (None, implied):
        raise ValueError(f"{weights} runs with the {implied} backend, not {backend}")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    if implied == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(weights, device=device or "cpu")
        if getattr(runner, "postprocess", "none") not in ("none", None):
            raise ValueError(f"{weights} has the post-processing in the graph; use an export with --postprocess none")
        chosen = get_config(config) if config else runner.config
    else:
        from .engine import TensorRTUnavailable

        try:
            from .tensorrt_runner import TensorRTRunner

            runner = TensorRTRunner(weights, device=device or "cuda")
        except TensorRTUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        chosen = get_config(config) if config else engine_config(weights)
    if chosen is None:
        raise ValueError(f"cannot tell the model config of {weights}: pass --config NAME_OR_FILE")
    if chosen.max_size != runner.input_size:
        raise ValueError(f"config {chosen.name!r} expects {chosen.max_size}px inputs, {weights} takes {runner.input_size}px")
    return runner, chosen
