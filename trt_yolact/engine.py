"""Build TensorRT engines from the exported ONNX model.

The pure logic (batch profile, precision plan, sidecar metadata and staleness) is separated from
the TensorRT calls so that it can be tested without TensorRT or a GPU. TensorRT is imported
lazily; a missing installation raises :class:`TensorRTUnavailable`.

Supported TensorRT versions: 10.x and 11.x (``SUPPORTED_TRT_MAJORS``).

* 10.x: a network built from an FP16 ONNX (or an FP32 ONNX built as FP32) is created
  *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so the engine runs in
  exactly the precision of the ONNX. FP16 requested from an FP32 ONNX uses the weakly typed
  ``BuilderFlag.FP16`` mode (TensorRT picks FP16 kernels where it can).
* 11.x: networks are always strongly typed (the creation flag is deprecated and ignored,
  ``BuilderFlag.FP16`` no longer exists). FP16 therefore means building from the FP16 ONNX;
  requesting FP16 with an FP32 ONNX is an error, never a silent FP32 build.

Conventions checked by ``tests/test_tensorrt_api_contract.py``: the TensorRT module is always
bound to the name ``trt``; TensorRT objects are held in variables (or ``self._<name>``
attributes) named as in ``TRT_OBJECT_TYPES``, and those names are used for nothing else; a
TensorRT name that exists only in one major version is listed in ``VERSION_SPECIFIC_TRT_NAMES``
and used only on that version's code path.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .files import atomic_write_bytes as _atomic_write
from .files import sha256_file

INPUT_NAME = "images"
SUPPORTED_TRT_MAJORS = ("10", "11")
SIDECAR_FORMAT = 1
PRECISIONS = ("fp16", "fp32")

# TensorRT names that exist only in some major versions: dotted name -> major version(s) in
# which it is used (the code path using it must be guarded accordingly).
VERSION_SPECIFIC_TRT_NAMES: dict[str, str] = {
    "BuilderFlag.FP16": "10",  # removed in 11.0 (networks are always strongly typed)
}

# Variables (and ``self._<name>`` attributes) that hold TensorRT objects, with their class, so
# that the API contract test can check method and property names used on them.
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


class TensorRTUnavailable(ImportError):
    """The ``tensorrt`` Python package cannot be imported (not installed, or libnvinfer missing)."""


class EngineBuildError(RuntimeError):
    """The ONNX model could not be turned into a TensorRT engine."""


class PrecisionError(ValueError):
    """The requested precision cannot be built from this ONNX with this TensorRT version."""


# --------------------------------------------------------------------------- batch profile


@dataclass(frozen=True)
class BuildProfile:
    """Batch sizes of the single optimization profile (min <= opt <= max, all >= 1)."""

    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8

    def __post_init__(self) -> None:
        values = (self.min_batch, self.opt_batch, self.max_batch)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"batch sizes must be integers, got {values!r}")
        if self.min_batch < 1:
            raise ValueError(f"batch sizes must be >= 1, got min={self.min_batch}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min <= opt <= max, got {self.min_batch},{self.opt_batch},{self.max_batch}")

    @classmethod
    def parse(cls, text: str | BuildProfile) -> BuildProfile:
        """``"1,4,8"`` -> BuildProfile(1, 4, 8); a single ``"4"`` means a fixed batch of 4."""
        if isinstance(text, BuildProfile):
            return text
        parts = [p.strip() for p in str(text).replace(":", ",").split(",")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"batch profile must be 'min,opt,max' integers, got {text!r}") from None
        if len(numbers) == 1:
            numbers *= 3
        if len(numbers) != 3:
            raise ValueError(f"batch profile must be 'min,opt,max', got {text!r}")
        return cls(*numbers)

    def shapes(self, input_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of the ``images`` input, ``[B, 3, S, S]``."""
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input size must be a positive integer, got {input_size!r}")
        return tuple((b, 3, input_size, input_size) for b in (self.min_batch, self.opt_batch, self.max_batch))

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch}

    def __str__(self) -> str:
        return f"{self.min_batch},{self.opt_batch},{self.max_batch}"


# --------------------------------------------------------------------------- precision plan


def trt_major(trt_version: str) -> str:
    """``"10.16.1.11"`` -> ``"10"``."""
    m = re.match(r"\s*(\d+)\.", str(trt_version) + ".")
    if not m:
        raise ValueError(f"not a TensorRT version: {trt_version!r}")
    return m.group(1)


class PrecisionPlan(NamedTuple):
    """How to build for a precision: names of ``NetworkDefinitionCreationFlag`` members to set
    at network creation, and of ``BuilderFlag`` members to set on the builder config."""

    creation_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]

    def describe(self, trt_version: str) -> str:
        if trt_major(trt_version) != "10":
            return "strongly typed (TensorRT >= 11)"
        if "STRONGLY_TYPED" in self.creation_flags:
            return "strongly typed"
        if "FP16" in self.builder_flags:
            return "weakly typed, BuilderFlag.FP16"
        return "weakly typed"


def precision_plan(trt_version: str, onnx_is_fp16: bool, requested: str, trt: Any = None) -> PrecisionPlan:
    """Choose network creation flags and builder flags for ``requested`` ("fp16" / "fp32").

    ``trt``: the TensorRT module (or a stand-in) to check which flags exist; ``None`` assumes
    the flags every 10.x release has. Raises :class:`PrecisionError` for combinations that
    cannot produce the requested precision (never falls back to another precision).
    """
    requested = str(requested).lower()
    if requested not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    major = trt_major(trt_version)
    if major not in SUPPORTED_TRT_MAJORS:
        raise PrecisionError(
            f"TensorRT {trt_version} is not supported (supported: "
            + ", ".join(f"{m}.x" for m in SUPPORTED_TRT_MAJORS) + ")"
        )
    if requested == "fp32" and onnx_is_fp16:
        raise PrecisionError(
            "fp32 requested but the ONNX model is FP16: pass the FP32 ONNX export to build an FP32 engine"
        )

    if major == "10":
        has_strongly_typed = trt is None or hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        if requested == "fp32" or onnx_is_fp16:
            # Precision of the ONNX is the precision of the engine.
            if has_strongly_typed:
                return PrecisionPlan(("STRONGLY_TYPED",), ())
            if requested == "fp32":
                return PrecisionPlan((), ())
        # fp16 from an FP32 ONNX, or from an FP16 ONNX without strong typing: let the
        # builder choose FP16 kernels.
        if trt is not None and not hasattr(trt.BuilderFlag, "FP16"):
            raise PrecisionError(
                f"TensorRT {trt_version} has no BuilderFlag.FP16: pass the FP16 ONNX export to build an FP16 engine"
            )
        return PrecisionPlan((), ("FP16",))

    # 11.x and later: always strongly typed, the ONNX decides the precision.
    if requested == "fp16" and not onnx_is_fp16:
        raise PrecisionError(
            f"fp16 requested but the ONNX model is FP32, and TensorRT {trt_version} builds every network "
            "strongly typed (no BuilderFlag.FP16): pass the FP16 ONNX export (e.g. model.fp16.onnx) "
            "to build an FP16 engine"
        )
    return PrecisionPlan((), ())


# --------------------------------------------------------------------------- ONNX inspection


def _onnx_model(onnx_path: str | os.PathLike):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False)


def onnx_is_fp16(onnx_path: str | os.PathLike) -> bool:
    """True when most floating-point weights of the ONNX are float16 (an FP16 export), or
    the ``images`` input itself is float16."""
    import onnx

    model = _onnx_model(onnx_path)
    f16 = onnx.TensorProto.FLOAT16
    for graph_input in model.graph.input:
        if graph_input.name == INPUT_NAME and graph_input.type.tensor_type.elem_type == f16:
            return True
    counts = {onnx.TensorProto.FLOAT: 0, f16: 0}
    for init in model.graph.initializer:
        if init.data_type in counts:
            n = 1
            for d in init.dims:
                n *= int(d)
            counts[init.data_type] += n
    return counts[f16] > counts[onnx.TensorProto.FLOAT]


def onnx_input_size(onnx_path: str | os.PathLike) -> int:
    """S of the ``images`` input [B, 3, S, S] (must be static in the ONNX)."""
    model = _onnx_model(onnx_path)
    for graph_input in model.graph.input:
        if graph_input.name == INPUT_NAME:
            dims = graph_input.type.tensor_type.shape.dim
            if len(dims) != 4:
                raise EngineBuildError(f"ONNX input {INPUT_NAME!r} must be [B,3,S,S], has rank {len(dims)}")
            h, w = dims[2].dim_value, dims[3].dim_value
            if h <= 0 or h != w or dims[1].dim_value not in (0, 3):
                raise EngineBuildError(
                    f"ONNX input {INPUT_NAME!r} must be [B,3,S,S] with a static S, "
                    f"got [{', '.join(d.dim_param or str(d.dim_value) for d in dims)}]"
                )
            return int(h)
    names = [i.name for i in model.graph.input]
    raise EngineBuildError(f"ONNX model has no input named {INPUT_NAME!r} (inputs: {names})")


# --------------------------------------------------------------------------- sidecar


def trt_yolact_version() -> str:
    try:
        from trt_yolact import __version__
    except Exception:
        return "0.0.0"
    return str(__version__)


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
    except Exception:
        return None


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine_path) + ".json")


def _normalize(value: Any) -> Any:
    """JSON round trip, so tuples compare equal to the lists read back from the sidecar."""
    return json.loads(json.dumps(value, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def write_sidecar(engine_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    path = sidecar_path(engine_path)
    _atomic_write(path, (json.dumps(_normalize(metadata), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar metadata, or None when it is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(engine_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def expected_metadata(
    *,
    tensorrt_version: str,
    gpu: dict[str, str] | None,
    profile: BuildProfile,
    precision: str,
    onnx_sha256: str,
    input_size: int,
) -> dict[str, Any]:
    """The sidecar fields an engine must match to be reused (the build time is not one)."""
    return {
        "sidecar_format": SIDECAR_FORMAT,
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": (gpu or {}).get("name", "unknown"),
        "compute_capability": (gpu or {}).get("compute_capability", "unknown"),
        "profile": BuildProfile.parse(profile).to_dict(),
        "precision": str(precision).lower(),
        "onnx_sha256": onnx_sha256,
        "input_size": int(input_size),
        "trt_yolact_version": trt_yolact_version(),
    }


def is_engine_stale(engine_path: str | os.PathLike, expected: dict[str, Any]) -> tuple[bool, str]:
    """(stale, reason): stale when the engine or its sidecar is missing or unreadable, or any
    field of ``expected`` differs from the sidecar."""
    engine_path = Path(engine_path)
    if not engine_path.is_file() or engine_path.stat().st_size == 0:
        return True, f"engine {engine_path.name} does not exist"
    sidecar = read_sidecar(engine_path)
    if sidecar is None:
        return True, f"sidecar {sidecar_path(engine_path).name} is missing or unreadable"
    for key, want in _normalize(expected).items():
        if key not in sidecar:
            return True, f"sidecar has no {key!r}"
        if sidecar[key] != want:
            return True, f"{key} changed: engine has {sidecar[key]!r}, expected {want!r}"
    return False, "up to date"


# How to rebuild an engine; quoted in the runner's errors.
# build rebuilds an engine whose sidecar does not match this TensorRT version and GPU.
REBUILD_COMMAND = "python -m trt_yolact.build --weights <checkpoint> --engines {folder}  (it replaces {engine})"


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


# --------------------------------------------------------------------------- TensorRT


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
            + ", ".join(f"{m}.x" for m in SUPPORTED_TRT_MAJORS) + ")"
        )
    return trt


@dataclass
class EngineBuildResult:
    engine_path: Path
    sidecar_path: Path
    metadata: dict[str, Any]
    reused: bool
    reason: str  # why it was (re)built, or why it was reused
    build_seconds: float = 0.0
    timing_cache: Path | None = None


def _make_progress_monitor(trt):
    """An ``IProgressMonitor`` feeding tqdm bars, or None without ``IProgressMonitor``/tqdm.

    Ctrl-C while TensorRT builds reaches Python inside these callbacks: it is recorded and the
    build is cancelled (``step_complete`` returns False); the caller re-raises it.
    """
    if not hasattr(trt, "IProgressMonitor"):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None

    class _TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._interrupted = False

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc=phase_name, position=len(self._bars), leave=False, dynamic_ncols=True
                )
            except KeyboardInterrupt:
                self._interrupted = True

        def step_complete(self, phase_name, step):
            if self._interrupted:
                return False
            try:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            except KeyboardInterrupt:
                self._interrupted = True
                return False
            return True

        def phase_finish(self, phase_name):
            try:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()
            except KeyboardInterrupt:
                self._interrupted = True

        def _close_all(self) -> None:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()

    return _TqdmProgressMonitor()


def _parse_onnx(parser, onnx_path: Path) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    messages = []
    for i in range(parser.num_errors):
        parser_error = parser.get_error(i)
        messages.append(
            f"  node {parser_error.node()} ({parser_error.node_name() or '?'}, "
            f"{parser_error.node_operator() or '?'}): [{parser_error.code()}] {parser_error.desc()}"
        )
    for line in messages:
        print(line, file=sys.stderr)
    raise EngineBuildError(
        f"TensorRT could not parse {onnx_path.name} ({len(messages)} error(s)):\n" + "\n".join(messages)
    )


def _load_timing_cache(builder_config, cache_path: Path | None):
    data = b""
    if cache_path is not None and cache_path.is_file():
        data = cache_path.read_bytes()
    try:
        trt_timing_cache = builder_config.create_timing_cache(data)
    except Exception:
        trt_timing_cache = None
    if trt_timing_cache is None and data:  # unreadable (other TensorRT version): start afresh
        print(f"warning: ignoring unusable timing cache {cache_path.name}", file=sys.stderr)
        trt_timing_cache = builder_config.create_timing_cache(b"")
    if trt_timing_cache is not None:
        builder_config.set_timing_cache(trt_timing_cache, False)


def _save_timing_cache(builder_config, cache_path: Path | None) -> None:
    if cache_path is None:
        return
    trt_timing_cache = builder_config.get_timing_cache()
    if trt_timing_cache is not None:
        _atomic_write(cache_path, memoryview(trt_timing_cache.serialize()))


def _default_timing_cache(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.stem + ".timing.cache")


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    profile: BuildProfile | str = BuildProfile(),
    precision: str = "fp16",
    workspace_gib: float = 4,
    timing_cache: str | os.PathLike | None | bool = None,
    verbose: bool = False,
    force: bool = False,
    input_size: int | None = None,
) -> EngineBuildResult:
    """Build (or reuse) a TensorRT engine for ``onnx_path``.

    An existing engine is reused when its sidecar (``<engine>.json``) matches this TensorRT
    version, GPU, profile, precision, ONNX content and input size, unless ``force``.
    ``timing_cache``: persistent timing cache file; None = ``<engine stem>.timing.cache`` beside
    the engine, False = none. ``input_size``: only needed when the ONNX input size is dynamic.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    profile = BuildProfile.parse(profile)
    precision = str(precision).lower()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if workspace_gib <= 0:
        raise ValueError(f"workspace_gib must be > 0, got {workspace_gib}")
    if timing_cache is None or timing_cache is True:
        cache_path: Path | None = _default_timing_cache(engine_path)
    elif timing_cache is False:
        cache_path = None
    else:
        cache_path = Path(timing_cache)

    trt = import_tensorrt()
    size = int(input_size) if input_size else onnx_input_size(onnx_path)
    is_fp16 = onnx_is_fp16(onnx_path)
    plan = precision_plan(trt.__version__, is_fp16, precision, trt)
    expected = expected_metadata(
        tensorrt_version=trt.__version__,
        gpu=gpu_info(),
        profile=profile,
        precision=precision,
        onnx_sha256=sha256_file(onnx_path),
        input_size=size,
    )
    stale, reason = is_engine_stale(engine_path, expected)
    if not stale and not force:
        return EngineBuildResult(engine_path, sidecar_path(engine_path), read_sidecar(engine_path) or expected,
                                 reused=True, reason=reason, timing_cache=cache_path)
    if not stale:
        reason = "rebuild forced"

    trt_logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    creation_flags = 0
    if "STRONGLY_TYPED" in plan.creation_flags:
        creation_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation_flags)
    parser = trt.OnnxParser(network, trt_logger)
    _parse_onnx(parser, onnx_path)

    input_names = []
    for i in range(network.num_inputs):
        network_input = network.get_input(i)
        input_names.append(network_input.name)
    if INPUT_NAME not in input_names:
        raise EngineBuildError(f"network has no input {INPUT_NAME!r} (inputs: {input_names})")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if "FP16" in plan.builder_flags:  # only ever planned for TensorRT 10.x
        builder_config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    min_shape, opt_shape, max_shape = profile.shapes(size)
    opt_profile.set_shape(INPUT_NAME, min_shape, opt_shape, max_shape)
    builder_config.add_optimization_profile(opt_profile)
    _load_timing_cache(builder_config, cache_path)
    monitor = _make_progress_monitor(trt)
    if monitor is not None:
        builder_config.progress_monitor = monitor

    print(f"building TensorRT {trt.__version__} engine {engine_path.name}: {precision} "
          f"({plan.describe(trt.__version__)}), batch {profile}, input {size}", file=sys.stderr)
    start = time.perf_counter()
    try:
        serialized_plan = builder.build_serialized_network(network, builder_config)
    finally:
        if monitor is not None:
            monitor._close_all()
    build_seconds = time.perf_counter() - start
    if monitor is not None and monitor._interrupted:
        raise KeyboardInterrupt
    if serialized_plan is None:
        raise EngineBuildError(
            f"TensorRT failed to build {engine_path.name} (see the TensorRT log above; rerun with verbose=True)"
        )

    metadata = dict(expected)
    metadata.update(
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        build_seconds=round(build_seconds, 3),
        precision_mode=plan.describe(trt.__version__),
        onnx_file=onnx_path.name,
        workspace_gib=workspace_gib,
    )
    # The old sidecar must never describe the new plan: drop it first, write it last.
    sidecar_path(engine_path).unlink(missing_ok=True)
    _atomic_write(engine_path, memoryview(serialized_plan))
    sidecar = write_sidecar(engine_path, metadata)
    _save_timing_cache(builder_config, cache_path)
    return EngineBuildResult(engine_path, sidecar, _normalize(metadata), reused=False, reason=reason,
                             build_seconds=build_seconds, timing_cache=cache_path)


def deserialize_engine(trt, engine_path: str | os.PathLike, trt_logger=None):
    """(runtime, engine); the runtime must outlive the engine."""
    engine_path = Path(engine_path)
    trt_logger = trt_logger or trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(trt_logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not deserialize {engine_path.name}: it was probably built with "
            "another TensorRT version or GPU; rebuild it"
        )
    return runtime, engine


def dump_engine_layers(engine_path: str | os.PathLike, out_json: str | os.PathLike) -> dict[str, Any]:
    """Write the engine inspector's per-layer information (JSON) to ``out_json`` and return it.

    Full detail needs an engine built with ``ProfilingVerbosity.DETAILED`` (``build_engine``
    does so)."""
    trt = import_tensorrt()
    runtime, engine = deserialize_engine(trt, engine_path)
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    _atomic_write(Path(out_json), (json.dumps(info, indent=2) + "\n").encode())
    del inspector, engine, runtime
    return info
