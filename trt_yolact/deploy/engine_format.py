"""What a TensorRT engine file is, read-only: its JSON sidecar, which TensorRT and GPU can run it, how to
rebuild it (the builder, :mod:`~trt_yolact.deploy.tensorrt_build`, writes the sidecar).

Supported TensorRT versions: 10.x and 11.x (``SUPPORTED_TRT_MAJORS``), from 10.0 on (``OLDEST_TRT_VERSION``,
whose name list the API contract test checks too). A serialized plan only deserializes
with the exact TensorRT version that built it and its kernels target one compute capability, so every
engine has a sidecar ``<engine>.json`` recording both, the ONNX it came from and the build settings.

Conventions checked by ``tests/test_tensorrt_api_contract.py`` in every module that calls TensorRT: the
module is always bound to the name ``trt``; TensorRT objects are held in variables (or ``self._<name>``
attributes) named as in ``TRT_OBJECT_TYPES``, and those names are used for nothing else; a TensorRT name
that exists only in some versions is listed in ``VERSION_SPECIFIC_TRT_NAMES`` and used only on those
versions' code path (behind a ``hasattr`` check or a major-version test).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import TensorRTUnavailable, UsageError

SUPPORTED_TRT_MAJORS = ("10", "11")
OLDEST_TRT_VERSION = "10.0.1"  # the first 10.x release; tests/data/tensorrt_api holds its name list
SIDECAR_FORMAT = 1

# TensorRT names that exist only in some versions: dotted name -> the versions in which it is used, as
# comma-separated major versions ("10") or "X.Y+" (from X.Y on, later majors included). The code path using
# it must be guarded accordingly.
VERSION_SPECIFIC_TRT_NAMES: dict[str, str] = {
    "BuilderFlag.FP16": "10",  # removed in 11.0 (networks are always strongly typed)
    "ICudaEngine.device_memory_size": "10",  # replaced by device_memory_size_v2 in 10.1, removed in 11.0
    "ICudaEngine.device_memory_size_v2": "10.1+",  # new in 10.1
}

# Variables (and ``self._<name>`` attributes) that hold TensorRT objects, with their class, so that the API
# contract test can check method and property names used on them.
TRT_OBJECT_TYPES: dict[str, str] = {
    "trt_logger": "Logger",
    "builder": "Builder",
    "network": "INetworkDefinition",
    "network_input": "ITensor",
    "parser": "OnnxParser",
    "parser_error": "ParserError",
    "builder_config": "IBuilderConfig",
    "opt_profile": "IOptimizationProfile",
    "trt_timing_cache": "ITimingCache",
    "serialized_plan": "IHostMemory",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "inspector": "EngineInspector",
}

# How to rebuild an engine whose sidecar does not match this TensorRT version and GPU; quoted in errors.
# Engines a command made in its --cache folder are remade by that command when stale; this is for the others.
REBUILD_COMMAND = (
    "make {engine} again from its checkpoint: python -m trt_yolact.build --weights CHECKPOINT --engines {folder}"
)


def trt_major(trt_version: str) -> str:
    """``"10.16.1.11"`` -> ``"10"``."""
    m = re.match(r"\s*(\d+)\.", str(trt_version) + ".")
    if not m:
        raise UsageError(f"not a TensorRT version: {trt_version!r}")
    return m.group(1)


# The process's one TensorRT logger (TensorRT wants a single ILogger for all builders and runtimes), made on
# first use for the tensorrt module that asked: (module, logger).
_PROCESS_LOGGER: tuple[Any, Any] | None = None


def process_logger(trt: Any) -> Any:
    """The one ``trt.Logger`` of this process (WARNING and above), shared by the builder and every runner.

    A builder asked to be verbose lowers its ``min_severity`` for the build only."""
    global _PROCESS_LOGGER
    if _PROCESS_LOGGER is None or _PROCESS_LOGGER[0] is not trt:
        _PROCESS_LOGGER = (trt, trt.Logger(trt.Logger.WARNING))
    return _PROCESS_LOGGER[1]


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` with a one-line reason."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TensorRTUnavailable(
            f"TensorRT is not available ({type(exc).__name__}: {reason}); it needs an NVIDIA GPU and "
            "the tensorrt Python package (10.x or 11.x)"
        ) from exc
    version = getattr(trt, "__version__", "unknown")
    try:
        major = trt_major(version)
    except ValueError:
        major = "?"
    if major not in SUPPORTED_TRT_MAJORS:
        raise TensorRTUnavailable(
            f"TensorRT {version} is not supported (supported: "
            + ", ".join(f"{m}.x" for m in SUPPORTED_TRT_MAJORS)
            + ")"
        )
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built or run here (no usable ``tensorrt`` package, or no CUDA GPU
    visible to torch), or None when they can."""
    try:
        import_tensorrt()
    except TensorRTUnavailable as exc:
        return str(exc)
    import torch

    return None if torch.cuda.is_available() else "TensorRT needs a CUDA GPU and torch sees none"


def gpu_info(device: int | str | None = None) -> dict[str, str] | None:
    """``{"name": ..., "compute_capability": "8.9"}`` of a CUDA device via torch, or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(device if device is not None else "cuda").index
        if index is None:
            index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - a broken CUDA setup only means "unknown GPU" here
        return None


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine_path) + ".json")


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar metadata, or None when it is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(engine_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rebuild_command(engine_path: str | os.PathLike) -> str:
    return REBUILD_COMMAND.format(folder=Path(engine_path).parent, engine=Path(engine_path).name)


def engine_compatibility_problem(
    metadata: dict[str, Any] | None, tensorrt_version: str, gpu: dict[str, str] | None
) -> str | None:
    """Why an engine described by ``metadata`` cannot run with this TensorRT version and GPU,
    or None. A plan only deserializes with the exact TensorRT version that built it, and its
    kernels target one compute capability. Without a sidecar nothing can be said (None)."""
    if metadata is None:
        return None
    built_with = metadata.get("tensorrt_version")
    if built_with is not None and str(built_with) != str(tensorrt_version):
        return f"it was built with TensorRT {built_with} but TensorRT {tensorrt_version} is running"
    built_cc = metadata.get("compute_capability")
    running_cc = (gpu or {}).get("compute_capability")
    if built_cc not in (None, "unknown") and running_cc not in (None, "unknown") and built_cc != running_cc:
        return (
            f"it was built for a GPU of compute capability {built_cc} ({metadata.get('gpu_name', '?')}) "
            f"but this GPU is {gpu.get('name', '?')} (compute capability {running_cc})"
        )
    return None
