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
* TF32 (``BuilderFlag.TF32``, which TensorRT sets by default) is an explicit choice, off unless asked
  (``DEFAULT_TF32``): with it an FP32 engine's convolutions round their inputs to a 10-bit mantissa, so it
  would no longer be the FP32 reference it is built to be; FP16 is the fast precision.
* The timing cache beside an engine is named after the TensorRT version and GPU that filled it
  (:func:`timing_cache_key`); a cache TensorRT rejects is reported and replaced by a fresh one.
* Every build records the equivalent ``trtexec`` command line (for a machine with TensorRT but without its
  Python bindings) and a ``polygraphy run`` command comparing TensorRT with ONNX Runtime
  (:func:`trtexec_command`, :func:`polygraphy_command`).
* INT8, on both: explicit quantization only. The TensorRT-flavour INT8 ONNX carries Q/DQ nodes (symmetric,
  zero points 0) around FP16 compute and is built strongly typed; there is no INT8 builder flag and no
  calibrator (11.x removed both).

Naming conventions for TensorRT objects: :mod:`trt_yolact.deploy.engine_format`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
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
    process_logger,
    read_sidecar,
    sidecar_path,
    trt_major,
)
from .onnx_format import INPUT_NAME, check_tensorrt_qdq, load_onnx, onnx_input_size, onnx_precision


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


# --------------------------------------------------------------------------- equivalent commands

DEFAULT_TF32 = False  # an FP32 engine stays the FP32 reference; see the module docstring
# polygraphy's (atol, rtol) per precision: what each precision's rounding leaves between TensorRT and ONNX
# Runtime on the raw outputs (FP16 keeps about 3 decimal digits through ~50 layers; INT8 steps are coarser).
POLYGRAPHY_TOLERANCES = {"fp32": (1e-4, 1e-3), "tf32": (1e-2, 1e-2), "fp16": (5e-2, 2e-2), "int8": (0.25, 0.1)}


def _strongly_typed(plan: PrecisionPlan, trt_version: str) -> bool:
    return trt_major(trt_version) != "10" or "STRONGLY_TYPED" in plan.creation_flags


def _dims(shape: tuple[int, ...], separator: str) -> str:
    return separator.join(str(d) for d in shape)


def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    plan: PrecisionPlan,
    trt_version: str,
    profile: BuildProfile,
    input_size: int,
    workspace_gib: float,
    timing_cache: str | os.PathLike | None,
    tf32: bool,
) -> str:
    """The ``trtexec`` command line that builds the same engine (same profile, precision mode, workspace,
    timing cache and TF32 choice) where TensorRT is installed without its Python bindings."""
    shapes = profile.shapes(input_size)
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    args += [f"--{kind}Shapes={INPUT_NAME}:{_dims(shape, 'x')}" for kind, shape in zip(("min", "opt", "max"), shapes)]
    if _strongly_typed(plan, trt_version):
        args.append("--stronglyTyped")
    if "FP16" in plan.builder_flags:
        args.append("--fp16")
    args.append(f"--memPoolSize=workspace:{round(workspace_gib * 1024)}")  # MiB
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    if not tf32:
        args.append("--noTF32")
    args.append("--profilingVerbosity=detailed")
    return shlex.join(args)


def polygraphy_command(
    onnx_path: str | os.PathLike,
    *,
    plan: PrecisionPlan,
    trt_version: str,
    precision: str,
    profile: BuildProfile,
    input_size: int,
    tf32: bool,
) -> str:
    """A ``polygraphy run`` command that builds the ONNX with TensorRT the same way and compares its outputs
    with ONNX Runtime's on one batch of the optimal size, at the tolerances of the precision."""
    shapes = profile.shapes(input_size)
    args = ["polygraphy", "run", str(onnx_path), "--trt", "--onnxrt"]
    args += ["--input-shapes", f"{INPUT_NAME}:[{_dims(shapes[1], ',')}]"]
    for kind, shape in zip(("min", "opt", "max"), shapes):
        args += [f"--trt-{kind}-shapes", f"{INPUT_NAME}:[{_dims(shape, ',')}]"]
    if _strongly_typed(plan, trt_version):
        args.append("--strongly-typed")
    if "FP16" in plan.builder_flags:
        args.append("--fp16")
    if tf32:
        args.append("--tf32")
    atol, rtol = POLYGRAPHY_TOLERANCES["tf32" if precision == "fp32" and tf32 else precision]
    args += ["--atol", f"{atol:g}", "--rtol", f"{rtol:g}"]
    return shlex.join(args)


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
    tf32: bool = DEFAULT_TF32,
) -> dict[str, Any]:
    """The sidecar fields an engine must match to be reused (the build time is not one)."""
    return {
        "tf32": bool(tf32),
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
    timing_cache_note: str = ""  # why the timing cache file was not used, when it was not


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


def _create_timing_cache(builder_config, data: bytes):
    try:
        return builder_config.create_timing_cache(data)
    except Exception:  # noqa: BLE001 - TensorRT raises its own types for an unreadable cache
        return None


def _load_timing_cache(builder_config, cache_path: Path | None) -> str:
    """Give the build the cache in ``cache_path`` (a new one when there is none); returns one line saying
    why the file was not used when TensorRT could not read it or refused it (``set_timing_cache`` returns
    False for a cache of another GPU), else ""."""
    data = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    trt_timing_cache = _create_timing_cache(builder_config, data)
    if trt_timing_cache is not None and builder_config.set_timing_cache(trt_timing_cache, False):
        return ""
    note = (
        f"timing cache {cache_path.name} rejected by TensorRT (made by another TensorRT version or GPU?): "
        "tactics timed afresh"
        if data
        else "TensorRT refused a new timing cache"
    )
    if data:
        trt_timing_cache = _create_timing_cache(builder_config, b"")
        if trt_timing_cache is not None and builder_config.set_timing_cache(trt_timing_cache, False):
            return note
    return note + "; built without a timing cache"


def _save_timing_cache(builder_config, cache_path: Path | None) -> None:
    if cache_path is None:
        return
    trt_timing_cache = builder_config.get_timing_cache()
    if trt_timing_cache is not None:
        atomic_write_bytes(cache_path, memoryview(trt_timing_cache.serialize()))


def timing_cache_key(trt_version: str, gpu: dict[str, str] | None) -> str:
    """``trt10.16.1.11.nvidia-h200-sm90``: who filled a timing cache (its tactic timings hold only for that
    TensorRT version and GPU)."""
    name = re.sub(r"[^a-z0-9]+", "-", (gpu or {}).get("name", "unknown").lower()).strip("-") or "unknown"
    capability = (gpu or {}).get("compute_capability", "unknown").replace(".", "")
    return f"trt{trt_version}.{name}-sm{capability}"


def _timing_cache_path(engine_path: Path, timing_cache: str | os.PathLike | None | bool, key: str) -> Path | None:
    """None or True: ``<engine stem>.<key>.timing.cache`` beside the engine; False: no cache; else that file."""
    if timing_cache is None or timing_cache is True:
        return engine_path.with_name(f"{engine_path.stem}.{key}.timing.cache")
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


@dataclass(frozen=True)
class _BuildSettings:
    plan: PrecisionPlan
    profile: BuildProfile
    input_size: int
    workspace_gib: float
    cache_path: Path | None
    verbose: bool
    tf32: bool = DEFAULT_TF32


def _create_builder_config(trt: Any, builder: Any, settings: _BuildSettings) -> tuple[Any, str]:
    """(the builder config, the timing cache's note: :func:`_load_timing_cache`)."""
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * (1 << 30)))
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if "FP16" in settings.plan.builder_flags:  # only ever planned for TensorRT 10.x
        builder_config.set_flag(trt.BuilderFlag.FP16)
    if settings.tf32:  # TensorRT sets TF32 by default: clear it unless asked for
        builder_config.set_flag(trt.BuilderFlag.TF32)
    else:
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *settings.profile.shapes(settings.input_size))
    builder_config.add_optimization_profile(opt_profile)
    return builder_config, _load_timing_cache(builder_config, settings.cache_path)


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


def equivalent_commands(
    onnx_path: Path, engine_path: Path, settings: _BuildSettings, trt_version: str, precision: str
) -> dict[str, str]:
    """The ``trtexec`` and ``polygraphy`` commands of a build (recorded in the sidecar and the build report)."""
    common = {"plan": settings.plan, "trt_version": trt_version, "profile": settings.profile}
    common.update(input_size=settings.input_size, tf32=settings.tf32)
    return {
        "trtexec": trtexec_command(
            onnx_path, engine_path, workspace_gib=settings.workspace_gib, timing_cache=settings.cache_path, **common
        ),
        "polygraphy": polygraphy_command(onnx_path, precision=precision, **common),
    }


def _build(
    trt: Any, onnx_path: Path, engine_path: Path, settings: _BuildSettings, metadata: dict[str, Any]
) -> tuple[dict[str, Any], float, str]:
    """Build and write the engine, its sidecar (``metadata`` plus the build's own fields) and the timing
    cache; returns (the sidecar's metadata, build seconds, the timing cache's note)."""
    plan, profile, size = settings.plan, settings.profile, settings.input_size
    trt_logger = process_logger(trt)
    trt_logger.min_severity = trt.Logger.VERBOSE if settings.verbose else trt.Logger.WARNING
    try:
        builder = trt.Builder(trt_logger)
        network, _parser = _create_network(trt, builder, plan, onnx_path, trt_logger)
        builder_config, cache_note = _create_builder_config(trt, builder, settings)
        if cache_note:
            print(f"warning: {cache_note}", file=sys.stderr)
        print(
            f"building TensorRT {trt.__version__} engine {engine_path.name}: {metadata['precision']} "
            f"({plan.describe(trt.__version__)}, TF32 {'on' if settings.tf32 else 'off'}), batch {profile}, "
            f"input {size}",
            file=sys.stderr,
        )
        serialized_plan, seconds = _serialize(trt, builder, network, builder_config, engine_path.name)
    finally:
        trt_logger.min_severity = trt.Logger.WARNING
    metadata = dict(
        metadata,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        build_seconds=round(seconds, 3),
        precision_mode=plan.describe(trt.__version__),
        onnx_file=onnx_path.name,
        workspace_gib=settings.workspace_gib,
        equivalent_commands=equivalent_commands(
            onnx_path, engine_path, settings, trt.__version__, metadata["precision"]
        ),
    )
    if cache_note:
        metadata["timing_cache_note"] = cache_note
    _write_engine(engine_path, serialized_plan, metadata)
    _save_timing_cache(builder_config, settings.cache_path)
    return metadata, seconds, cache_note


def _onnx_record(onnx_path: Path) -> dict[str, Any]:
    """What a runner of the engine needs from the ONNX's metadata: the config and the grid its priors are made
    on (the raw export has them as no output)."""
    props = {p.key: p.value for p in load_onnx(onnx_path).metadata_props}
    try:
        return {key: json.loads(props[key]) for key in ("config", "prior_grid") if key in props}
    except ValueError:
        raise EngineBuildError(f"{onnx_path.name} has malformed trt_yolact metadata") from None


def _plan_for(trt: Any, onnx_path: Path, precision: str) -> PrecisionPlan:
    plan = precision_plan(trt.__version__, onnx_precision(onnx_path), precision, trt)
    if precision == "int8":
        check_tensorrt_qdq(onnx_path)  # the ONNX Runtime flavour's uint8 zero points are not TensorRT's
    return plan


def _check_build_arguments(onnx_path: Path, workspace_gib: float) -> None:
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if workspace_gib <= 0:
        raise UsageError(f"workspace_gib must be > 0, got {workspace_gib}")


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
    tf32: bool = DEFAULT_TF32,
) -> EngineBuildResult:
    """Build (or reuse) a TensorRT engine for ``onnx_path``.

    An existing engine is reused when its sidecar (``<engine>.json``) matches this TensorRT version, GPU,
    profile, precision, TF32 choice, ONNX content and input size, unless ``force``. ``timing_cache``:
    persistent timing cache file; None = ``<engine stem>.<timing_cache_key>.timing.cache`` beside the engine,
    False = none. ``input_size``: only needed when the ONNX input size is dynamic. ``tf32``: let FP32 layers
    use TF32 (``BuilderFlag.TF32``). ``extra_metadata`` is recorded in the sidecar as well (it does not decide
    reuse).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    profile, precision = BuildProfile.parse(profile), str(precision).lower()
    _check_build_arguments(onnx_path, workspace_gib)
    trt = import_tensorrt()
    gpu = gpu_info()
    cache_path = _timing_cache_path(engine_path, timing_cache, timing_cache_key(trt.__version__, gpu))
    size = int(input_size) if input_size else onnx_input_size(onnx_path)
    plan = _plan_for(trt, onnx_path, precision)
    expected = expected_metadata(
        tensorrt_version=trt.__version__,
        gpu=gpu,
        profile=profile,
        precision=precision,
        onnx_sha256=sha256_file(onnx_path),
        input_size=size,
        tf32=tf32,
    )
    stale, reason = is_engine_stale(engine_path, expected)
    if not stale and not force:
        metadata = read_sidecar(engine_path) or expected
        return EngineBuildResult(
            engine_path, sidecar_path(engine_path), metadata, True, reason, timing_cache=cache_path
        )
    settings = _BuildSettings(plan, profile, size, workspace_gib, cache_path, verbose, bool(tf32))
    metadata, seconds, cache_note = _build(
        trt, onnx_path, engine_path, settings, {**_onnx_record(onnx_path), **(extra_metadata or {}), **expected}
    )
    return EngineBuildResult(
        engine_path,
        sidecar_path(engine_path),
        normalize(metadata),
        reused=False,
        reason="rebuild forced" if not stale else reason,
        build_seconds=seconds,
        timing_cache=cache_path,
        timing_cache_note=cache_note,
    )
