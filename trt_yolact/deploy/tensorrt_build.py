"""Build TensorRT engines from exported ONNX models (TensorRT 10.x and 11.x).

The pure logic (batch profile, precision plan, reuse check) is kept apart from the TensorRT calls so that it
can be tested without TensorRT or a GPU. TensorRT is imported lazily
(:func:`~trt_yolact.deploy.engine_format.import_tensorrt`).

* 10.x: a network built from an FP16 ONNX (or an FP32 ONNX built as FP32) is created *strongly typed*
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so the engine runs in exactly the precision of the
  ONNX. FP16 requested from an FP32 ONNX uses the weakly typed ``BuilderFlag.FP16`` mode (TensorRT picks
  FP16 kernels where it can).
* 11.x: networks are always strongly typed (the creation flag is deprecated and ignored,
  ``BuilderFlag.FP16`` no longer exists). FP16 therefore means building from the FP16 ONNX; requesting FP16
  with an FP32 ONNX is an error, never a silent FP32 build.
* INT8, on both: explicit quantization only. The TensorRT-flavour INT8 ONNX carries Q/DQ nodes (symmetric,
  zero points 0) around FP16 compute and is built strongly typed; there is no INT8 builder flag and no
  calibrator (11.x removed both).

Naming conventions for TensorRT objects: :mod:`trt_yolact.deploy.engine_format`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from ..config import PRECISIONS
from ..errors import EngineBuildError, PrecisionError, UsageError
from ..files import atomic_write_bytes, atomic_write_text, sha256_file
from .engine_format import (
    SIDECAR_FORMAT,
    SUPPORTED_TRT_MAJORS,
    gpu_info,
    import_tensorrt,
    read_sidecar,
    sidecar_path,
    trt_major,
)
from .onnx_format import INPUT_NAME, check_tensorrt_qdq, onnx_input_size, onnx_precision


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
                raise UsageError(f"batch sizes must be integers, got {values!r}")
        if self.min_batch < 1:
            raise UsageError(f"batch sizes must be >= 1, got min={self.min_batch}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise UsageError(f"need min <= opt <= max, got {self.min_batch},{self.opt_batch},{self.max_batch}")

    @classmethod
    def parse(cls, text: str | BuildProfile) -> BuildProfile:
        """``"1,4,8"`` -> BuildProfile(1, 4, 8); a single ``"4"`` means a fixed batch of 4."""
        if isinstance(text, BuildProfile):
            return text
        parts = [p.strip() for p in str(text).replace(":", ",").split(",")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise UsageError(f"batch profile must be 'min,opt,max' integers, got {text!r}") from None
        if len(numbers) == 1:
            numbers *= 3
        if len(numbers) != 3:
            raise UsageError(f"batch profile must be 'min,opt,max', got {text!r}")
        return cls(*numbers)

    def shapes(self, input_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of the ``images`` input, ``[B, 3, S, S]``."""
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise UsageError(f"input size must be a positive integer, got {input_size!r}")
        return tuple((b, 3, input_size, input_size) for b in (self.min_batch, self.opt_batch, self.max_batch))

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch}

    def __str__(self) -> str:
        return f"{self.min_batch},{self.opt_batch},{self.max_batch}"


# --------------------------------------------------------------------------- precision plan


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


def precision_plan(trt_version: str, onnx_precision: str, requested: str, trt: Any = None) -> PrecisionPlan:
    """Choose network creation flags and builder flags for ``requested`` ("fp32" / "fp16" / "int8") from an
    ONNX of ``onnx_precision`` (:func:`~trt_yolact.deploy.onnx_format.onnx_precision`).

    ``trt``: the TensorRT module (or a stand-in) to check which flags exist; ``None`` assumes the flags every
    10.x release has. INT8 is always explicit (the Q/DQ nodes of the TensorRT-flavour INT8 ONNX) and built
    strongly typed; no INT8 builder flag or calibrator is ever used. Raises :class:`PrecisionError` for
    combinations that cannot produce the requested precision (never falls back to another precision).
    """
    requested = str(requested).lower()
    if requested not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    major = trt_major(trt_version)
    if major not in SUPPORTED_TRT_MAJORS:
        raise PrecisionError(
            f"TensorRT {trt_version} is not supported (supported: "
            + ", ".join(f"{m}.x" for m in SUPPORTED_TRT_MAJORS)
            + ")"
        )
    _check_onnx_precision(onnx_precision, requested)
    has_strongly_typed = trt is None or hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if major != "10":  # 11.x and later: always strongly typed, the ONNX decides the precision
        if requested == "fp16" and onnx_precision != "fp16":
            raise PrecisionError(
                f"fp16 requested but the ONNX model is FP32, and TensorRT {trt_version} builds every network "
                "strongly typed (no BuilderFlag.FP16): pass the FP16 ONNX export (e.g. model.fp16.onnx) "
                "to build an FP16 engine"
            )
        return PrecisionPlan((), ())
    if requested == "int8" and not has_strongly_typed:
        raise PrecisionError(f"TensorRT {trt_version} cannot build strongly typed networks, which INT8 Q/DQ needs")
    if requested == onnx_precision and has_strongly_typed:
        return PrecisionPlan(("STRONGLY_TYPED",), ())  # the precision of the ONNX is that of the engine
    if requested == "fp32":
        return PrecisionPlan((), ())
    # fp16 from an FP32 ONNX, or from an FP16 ONNX without strong typing: the builder picks FP16 kernels.
    if trt is not None and not hasattr(trt.BuilderFlag, "FP16"):
        raise PrecisionError(
            f"TensorRT {trt_version} has no BuilderFlag.FP16: pass the FP16 ONNX export to build an FP16 engine"
        )
    return PrecisionPlan((), ("FP16",))


def _check_onnx_precision(onnx_precision: str, requested: str) -> None:
    if onnx_precision not in PRECISIONS:
        raise PrecisionError(f"unknown ONNX precision {onnx_precision!r}")
    if requested == "int8" and onnx_precision != "int8":
        raise PrecisionError(
            f"int8 requested but the ONNX model is {onnx_precision.upper()}: INT8 engines are built from the "
            "TensorRT-flavour INT8 ONNX (Q/DQ nodes, e.g. model.int8-trt.onnx from export --int8)"
        )
    if onnx_precision == "int8" and requested != "int8":
        raise PrecisionError(f"{requested} requested but the ONNX model is INT8 (Q/DQ): pass the {requested} export")
    if requested == "fp32" and onnx_precision == "fp16":
        raise PrecisionError(
            "fp32 requested but the ONNX model is FP16: pass the FP32 ONNX export to build an FP32 engine"
        )


# --------------------------------------------------------------------------- reuse


def normalize(value: Any) -> Any:
    """JSON round trip, so tuples compare equal to the lists read back from the sidecar."""
    return json.loads(json.dumps(value, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def write_sidecar(engine_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    path = sidecar_path(engine_path)
    atomic_write_text(path, json.dumps(normalize(metadata), indent=2, sort_keys=True) + "\n")
    return path


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
        "trt_yolact_version": __version__,
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
    for key, want in normalize(expected).items():
        if key not in sidecar:
            return True, f"sidecar has no {key!r}"
        if sidecar[key] != want:
            return True, f"{key} changed: engine has {sidecar[key]!r}, expected {want!r}"
    return False, "up to date"


@dataclass
class EngineBuildResult:
    engine_path: Path
    sidecar_path: Path
    metadata: dict[str, Any]
    reused: bool
    reason: str  # why it was (re)built, or why it was reused
    build_seconds: float = 0.0
    timing_cache: Path | None = None


# --------------------------------------------------------------------------- TensorRT


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
    except Exception:  # noqa: BLE001 - TensorRT raises its own types for a foreign cache
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
        atomic_write_bytes(cache_path, memoryview(trt_timing_cache.serialize()))


def _timing_cache_path(engine_path: Path, timing_cache: str | os.PathLike | None | bool) -> Path | None:
    """None or True: ``<engine stem>.timing.cache`` beside the engine; False: no cache; else that file."""
    if timing_cache is None or timing_cache is True:
        return engine_path.with_name(engine_path.stem + ".timing.cache")
    return None if timing_cache is False else Path(timing_cache)


def _create_network(trt: Any, builder: Any, plan: PrecisionPlan, onnx_path: Path, trt_logger: Any) -> tuple[Any, Any]:
    """The parsed network (and its parser, which must outlive it) with the ``images`` input checked."""
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
    return network, parser


def _create_builder_config(
    trt: Any, builder: Any, plan: PrecisionPlan, shapes: tuple, workspace_gib: float, cache_path: Path | None
) -> Any:
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if "FP16" in plan.builder_flags:  # only ever planned for TensorRT 10.x
        builder_config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *shapes)
    builder_config.add_optimization_profile(opt_profile)
    _load_timing_cache(builder_config, cache_path)
    return builder_config


def _serialize(trt: Any, builder: Any, network: Any, builder_config: Any, engine_name: str) -> tuple[Any, float]:
    """(the serialized plan, seconds); Ctrl-C during the build cancels it and is re-raised."""
    monitor = _make_progress_monitor(trt)
    if monitor is not None:
        builder_config.progress_monitor = monitor
    start = time.perf_counter()
    try:
        serialized_plan = builder.build_serialized_network(network, builder_config)
    finally:
        if monitor is not None:
            monitor._close_all()
    if monitor is not None and monitor._interrupted:
        raise KeyboardInterrupt
    if serialized_plan is None:
        raise EngineBuildError(
            f"TensorRT failed to build {engine_name} (see the TensorRT log above; rerun with verbose=True)"
        )
    return serialized_plan, time.perf_counter() - start


def _write_engine(engine_path: Path, serialized_plan: Any, metadata: dict[str, Any]) -> Path:
    # The old sidecar must never describe the new plan: drop it first, write it last.
    sidecar_path(engine_path).unlink(missing_ok=True)
    atomic_write_bytes(engine_path, memoryview(serialized_plan))
    return write_sidecar(engine_path, metadata)


@dataclass(frozen=True)
class _BuildSettings:
    plan: PrecisionPlan
    profile: BuildProfile
    input_size: int
    workspace_gib: float
    cache_path: Path | None
    verbose: bool


def _build(
    trt: Any, onnx_path: Path, engine_path: Path, settings: _BuildSettings, metadata: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    """Build and write the engine, its sidecar (``metadata`` plus the build's own fields) and the timing
    cache; returns (the sidecar's metadata, build seconds)."""
    plan, profile, size = settings.plan, settings.profile, settings.input_size
    trt_logger = trt.Logger(trt.Logger.VERBOSE if settings.verbose else trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network, _parser = _create_network(trt, builder, plan, onnx_path, trt_logger)
    shapes = profile.shapes(size)
    builder_config = _create_builder_config(trt, builder, plan, shapes, settings.workspace_gib, settings.cache_path)
    print(
        f"building TensorRT {trt.__version__} engine {engine_path.name}: {metadata['precision']} "
        f"({plan.describe(trt.__version__)}), batch {profile}, input {size}",
        file=sys.stderr,
    )
    serialized_plan, seconds = _serialize(trt, builder, network, builder_config, engine_path.name)
    metadata = dict(
        metadata,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        build_seconds=round(seconds, 3),
        precision_mode=plan.describe(trt.__version__),
        onnx_file=onnx_path.name,
        workspace_gib=settings.workspace_gib,
    )
    _write_engine(engine_path, serialized_plan, metadata)
    _save_timing_cache(builder_config, settings.cache_path)
    return metadata, seconds


def _plan_for(trt: Any, onnx_path: Path, precision: str) -> PrecisionPlan:
    plan = precision_plan(trt.__version__, onnx_precision(onnx_path), precision, trt)
    if precision == "int8":
        check_tensorrt_qdq(onnx_path)  # the ONNX Runtime flavour's uint8 zero points are not TensorRT's
    return plan


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
    extra_metadata: dict[str, Any] | None = None,
) -> EngineBuildResult:
    """Build (or reuse) a TensorRT engine for ``onnx_path``.

    An existing engine is reused when its sidecar (``<engine>.json``) matches this TensorRT version, GPU,
    profile, precision, ONNX content and input size, unless ``force``. ``timing_cache``: persistent timing
    cache file; None = ``<engine stem>.timing.cache`` beside the engine, False = none. ``input_size``: only
    needed when the ONNX input size is dynamic. ``extra_metadata`` is recorded in the sidecar as well (it does
    not decide reuse).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    profile, precision = BuildProfile.parse(profile), str(precision).lower()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if workspace_gib <= 0:
        raise UsageError(f"workspace_gib must be > 0, got {workspace_gib}")
    cache_path = _timing_cache_path(engine_path, timing_cache)
    trt = import_tensorrt()
    size = int(input_size) if input_size else onnx_input_size(onnx_path)
    plan = _plan_for(trt, onnx_path, precision)
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
        return EngineBuildResult(
            engine_path,
            sidecar_path(engine_path),
            read_sidecar(engine_path) or expected,
            reused=True,
            reason=reason,
            timing_cache=cache_path,
        )
    settings = _BuildSettings(plan, profile, size, workspace_gib, cache_path, verbose)
    metadata, seconds = _build(trt, onnx_path, engine_path, settings, {**(extra_metadata or {}), **expected})
    return EngineBuildResult(
        engine_path,
        sidecar_path(engine_path),
        normalize(metadata),
        reused=False,
        reason="rebuild forced" if not stale else reason,
        build_seconds=seconds,
        timing_cache=cache_path,
    )
