"""Engine builder logic without TensorRT: batch profile, precision plan, sidecar and staleness,
and build_engine's control flow against a fake ``tensorrt`` module. Tests that need the real
TensorRT and a GPU are skipped here."""

from __future__ import annotations

import json
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from trt_yolact import files
from trt_yolact.config import BackboneConfig, YolactConfig
from trt_yolact.deploy import engine_format, onnx_format
from trt_yolact.deploy import tensorrt_build as eng
from trt_yolact.deploy.engine_format import (
    engine_compatibility_problem,
    read_sidecar,
    rebuild_command,
    sidecar_path,
    trt_major,
)
from trt_yolact.deploy.tensorrt_build import (
    BuildProfile,
    PrecisionPlan,
    build_engine,
    expected_metadata,
    is_engine_stale,
    precision_plan,
    write_sidecar,
)
from trt_yolact.errors import EngineBuildError, PrecisionError, RunnerError, TensorRTUnavailable
from trt_yolact.runtime.tensorrt_runner import engine_layers

API_DIR = Path(__file__).resolve().parent / "data" / "tensorrt_api"
TINY_CONFIG = YolactConfig(
    name="tiny",
    backbone=BackboneConfig(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_channels=16),
    max_size=32,
    class_names=("a", "b"),
    category_ids=(1, 2),
    fpn_channels=16,
    proto_channels=16,
    head_channels=16,
    pred_scales=((8,), (16,), (32,), (64,), (128,)),
)
STRONG = PrecisionPlan(("STRONGLY_TYPED",), ())
WEAK_FP16 = PrecisionPlan((), ("FP16",))
NO_FLAGS = PrecisionPlan((), ())


# --------------------------------------------------------------------------- profile


def test_profile_defaults_and_parse():
    assert BuildProfile() == BuildProfile(1, 4, 8)
    assert BuildProfile.parse("1,4,8") == BuildProfile(1, 4, 8)
    assert BuildProfile.parse(" 2, 2 ,16") == BuildProfile(2, 2, 16)
    assert BuildProfile.parse("4") == BuildProfile(4, 4, 4)
    assert BuildProfile.parse(BuildProfile(1, 2, 3)) == BuildProfile(1, 2, 3)
    assert str(BuildProfile(1, 4, 8)) == "1,4,8"
    assert BuildProfile(1, 4, 8).to_dict() == {"min": 1, "opt": 4, "max": 8}


@pytest.mark.parametrize("text", ["0,1,2", "4,2,8", "1,8,4", "1,4", "1,2,3,4", "a,b,c", "", "-1,1,1", "1.5,2,3"])
def test_profile_rejects(text):
    with pytest.raises(ValueError):
        BuildProfile.parse(text)


def test_profile_rejects_non_integers():
    with pytest.raises(ValueError):
        BuildProfile(1, 2.0, 3)
    with pytest.raises(ValueError):
        BuildProfile(True, 1, 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(-3, 40), st.integers(-3, 40), st.integers(-3, 40))
def test_profile_validity_property(a, b, c):
    valid = 1 <= a <= b <= c
    try:
        profile = BuildProfile.parse(f"{a},{b},{c}")
    except ValueError:
        assert not valid
    else:
        assert valid and BuildProfile.parse(str(profile)) == profile


def test_profile_shapes():
    assert BuildProfile(1, 4, 8).shapes(550) == ((1, 3, 550, 550), (4, 3, 550, 550), (8, 3, 550, 550))
    for bad in (0, -1, 550.0, True):
        with pytest.raises(ValueError):
            BuildProfile().shapes(bad)


# --------------------------------------------------------------------------- precision plan


def fake_module_from_list(path: Path) -> types.SimpleNamespace:
    """A namespace tree with exactly the names of an extracted TensorRT name list."""
    root = types.SimpleNamespace()
    for line in path.read_text().split():
        node = root
        for part in line.split("."):
            if not hasattr(node, part):
                setattr(node, part, types.SimpleNamespace())
            node = getattr(node, part)
    return root


def real_lists():
    return sorted(API_DIR.glob("tensorrt-*.txt"))


def _ns(**flags):
    return types.SimpleNamespace(**flags)


def test_trt_major():
    assert trt_major("10.16.1.11") == "10"
    assert trt_major("11.4.0.106") == "11"
    with pytest.raises(ValueError):
        trt_major("ten")


@pytest.mark.parametrize(
    "trt", [None, _ns(NetworkDefinitionCreationFlag=_ns(STRONGLY_TYPED=1), BuilderFlag=_ns(FP16=0))]
)
def test_plan_trt10_strongly_typed(trt):
    assert precision_plan("10.16.1.11", "fp16", "fp16", trt) == STRONG  # FP16 ONNX, strongly typed
    assert precision_plan("10.16.1.11", "fp32", "fp32", trt) == STRONG
    assert precision_plan("10.16.1.11", "fp32", "fp16", trt) == WEAK_FP16  # FP16 kernels chosen by the builder
    assert precision_plan("10.16.1.11", "fp16", "FP16", trt) == STRONG


def test_plan_trt10_without_strongly_typed():
    trt = _ns(NetworkDefinitionCreationFlag=_ns(EXPLICIT_BATCH=0), BuilderFlag=_ns(FP16=0))
    assert precision_plan("10.0.1", "fp16", "fp16", trt) == WEAK_FP16
    assert precision_plan("10.0.1", "fp32", "fp16", trt) == WEAK_FP16
    assert precision_plan("10.0.1", "fp32", "fp32", trt) == NO_FLAGS
    no_fp16 = _ns(NetworkDefinitionCreationFlag=_ns(), BuilderFlag=_ns())
    with pytest.raises(PrecisionError, match="FP16 ONNX"):
        precision_plan("10.0.1", "fp16", "fp16", no_fp16)  # never a silent FP32 build


@pytest.mark.parametrize("trt", [None, _ns(NetworkDefinitionCreationFlag=_ns(STRONGLY_TYPED=0), BuilderFlag=_ns())])
def test_plan_trt11(trt):
    assert precision_plan("11.4.0.106", "fp16", "fp16", trt) == NO_FLAGS  # always strongly typed
    assert precision_plan("11.4.0.106", "fp32", "fp32", trt) == NO_FLAGS
    with pytest.raises(PrecisionError) as info:
        precision_plan("11.4.0.106", "fp32", "fp16", trt)
    assert "FP16 ONNX" in str(info.value) and "FP32" in str(info.value)


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_plan_fp32_from_fp16_onnx_is_an_error(version):
    with pytest.raises(PrecisionError, match="FP32 ONNX"):
        precision_plan(version, "fp16", "fp32")


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_plan_int8_is_strongly_typed_from_a_qdq_onnx_only(version):
    trt = _ns(NetworkDefinitionCreationFlag=_ns(STRONGLY_TYPED=0), BuilderFlag=_ns(FP16=0))
    plan = precision_plan(version, "int8", "int8", trt)
    assert plan.builder_flags == () and plan == (STRONG if version.startswith("10.") else NO_FLAGS)
    for onnx_precision in ("fp32", "fp16"):  # never INT8 from a graph without Q/DQ (no implicit calibration)
        with pytest.raises(PrecisionError, match="TensorRT-flavour INT8 ONNX"):
            precision_plan(version, onnx_precision, "int8", trt)
    for requested in ("fp32", "fp16"):  # nor another precision from a Q/DQ graph
        with pytest.raises(PrecisionError, match="INT8"):
            precision_plan(version, "int8", requested, trt)


def test_plan_int8_needs_strong_typing_on_trt10():
    trt = _ns(NetworkDefinitionCreationFlag=_ns(EXPLICIT_BATCH=0), BuilderFlag=_ns(FP16=0))
    with pytest.raises(PrecisionError, match="strongly typed"):
        precision_plan("10.0.1", "int8", "int8", trt)


def test_plan_rejects_unknown_precision_and_version():
    with pytest.raises(PrecisionError):
        precision_plan("10.16.1.11", "fp32", "int4")
    with pytest.raises(PrecisionError, match="not supported"):
        precision_plan("8.6.1", "fp32", "fp32")
    with pytest.raises(PrecisionError, match="not supported"):
        precision_plan("12.0.0", "fp16", "fp16")


@pytest.mark.parametrize("path", real_lists(), ids=lambda p: p.stem)
def test_plan_against_real_name_lists(path):
    """Flags planned for each extracted TensorRT version exist in that version."""
    trt = fake_module_from_list(path)
    version = path.stem[len("tensorrt-") :]
    for onnx_precision, requested in [("fp16", "fp16"), ("fp32", "fp32"), ("fp32", "fp16"), ("int8", "int8")]:
        try:
            plan = precision_plan(version, onnx_precision, requested, trt)
        except PrecisionError:
            assert version.startswith("11.") and requested == "fp16" and onnx_precision == "fp32"
            continue
        for flag in plan.creation_flags:
            assert hasattr(trt.NetworkDefinitionCreationFlag, flag)
        for flag in plan.builder_flags:
            assert hasattr(trt.BuilderFlag, flag)
        if version.startswith("10.") and onnx_precision == requested:
            assert plan == STRONG
        if requested == "int8":  # explicit quantization: strongly typed, never a builder flag
            assert plan.builder_flags == () and (plan == STRONG or version.startswith("11."))


# --------------------------------------------------------------------------- sidecar


def _expected(**overrides):
    base = dict(
        tensorrt_version="10.16.1.11",
        gpu={"name": "NVIDIA H100", "compute_capability": "9.0"},
        profile=BuildProfile(1, 4, 8),
        precision="fp16",
        onnx_sha256="ab" * 32,
        input_size=550,
    )
    base.update(overrides)
    return expected_metadata(**base)


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"plan")
    return path


def test_expected_metadata_fields():
    meta = _expected()
    assert meta["tensorrt_version"] == "10.16.1.11"
    assert meta["gpu_name"] == "NVIDIA H100" and meta["compute_capability"] == "9.0"
    assert meta["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert meta["precision"] == "fp16" and meta["input_size"] == 550
    import trt_yolact

    assert meta["trt_yolact_version"] == getattr(trt_yolact, "__version__", "0.0.0")
    no_gpu = _expected(gpu=None)
    assert no_gpu["gpu_name"] == "unknown" and no_gpu["compute_capability"] == "unknown"


def test_sidecar_round_trip(engine_file):
    meta = dict(_expected(), built_at="2025-01-01T00:00:00", build_seconds=12.5)
    path = write_sidecar(engine_file, meta)
    assert path == sidecar_path(engine_file) == engine_file.parent / "model.engine.json"
    assert read_sidecar(engine_file) == meta
    assert not list(engine_file.parent.glob("*.tmp"))


def test_identical_sidecar_is_fresh(engine_file):
    write_sidecar(engine_file, dict(_expected(), built_at="then", build_seconds=3.0))
    assert is_engine_stale(engine_file, _expected()) == (False, "up to date")


@pytest.mark.parametrize(
    "change",
    [
        {"tensorrt_version": "10.15.1.29"},
        {"gpu": {"name": "NVIDIA A100", "compute_capability": "9.0"}},
        {"gpu": {"name": "NVIDIA H100", "compute_capability": "8.0"}},
        {"profile": BuildProfile(1, 4, 16)},
        {"profile": BuildProfile(2, 4, 8)},
        {"precision": "fp32"},
        {"onnx_sha256": "cd" * 32},
        {"input_size": 700},
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_changed_field_makes_it_stale(engine_file, change):
    write_sidecar(engine_file, _expected())
    stale, reason = is_engine_stale(engine_file, _expected(**change))
    assert stale and "changed" in reason


def test_every_expected_field_is_compared(engine_file):
    expected = _expected()
    write_sidecar(engine_file, expected)
    for key in expected:
        changed = dict(expected, **{key: "something else"})
        stale, reason = is_engine_stale(engine_file, changed)
        assert stale and key in reason


def test_trt_yolact_version_change_makes_it_stale(engine_file):
    write_sidecar(engine_file, dict(_expected(), trt_yolact_version="0.0.1-old"))
    assert is_engine_stale(engine_file, _expected())[0]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", "\x00\x01"])
def test_corrupt_sidecar_is_stale(engine_file, content):
    sidecar_path(engine_file).write_text(content)
    stale, reason = is_engine_stale(engine_file, _expected())
    assert stale and "unreadable" in reason
    assert read_sidecar(engine_file) is None


def test_sidecar_missing_a_field_is_stale(engine_file):
    meta = _expected()
    del meta["onnx_sha256"]
    write_sidecar(engine_file, meta)
    assert is_engine_stale(engine_file, _expected()) == (True, "sidecar has no 'onnx_sha256'")


def test_missing_or_empty_engine_is_stale(tmp_path, engine_file):
    write_sidecar(engine_file, _expected())
    engine_file.write_bytes(b"")
    assert is_engine_stale(engine_file, _expected())[0]
    assert is_engine_stale(tmp_path / "absent.engine", _expected())[0]
    no_sidecar = tmp_path / "other.engine"
    no_sidecar.write_bytes(b"plan")
    stale, reason = is_engine_stale(no_sidecar, _expected())
    assert stale and "missing" in reason


def test_engine_compatibility_problem():
    meta = _expected()
    gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert engine_compatibility_problem(meta, "10.16.1.11", gpu) is None
    assert engine_compatibility_problem(None, "10.16.1.11", gpu) is None
    assert "TensorRT 10.16.1.11" in engine_compatibility_problem(meta, "11.4.0.106", gpu)
    problem = engine_compatibility_problem(meta, "10.16.1.11", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    assert "8.9" in problem and "9.0" in problem
    # same architecture, other board: TensorRT accepts it
    assert (
        engine_compatibility_problem(meta, "10.16.1.11", {"name": "NVIDIA H100 NVL", "compute_capability": "9.0"})
        is None
    )
    assert engine_compatibility_problem(meta, "10.16.1.11", None) is None
    assert "python -m trt_yolact.build" in rebuild_command("x.engine") and "x.engine" in rebuild_command("x.engine")


def test_atomic_write_cleans_up_on_interrupt(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_gpu_info_without_cuda():
    assert engine_format.gpu_info() is None


# --------------------------------------------------------------------------- ONNX inspection


def _tiny_onnx(path: Path, *, size=32, fp16=False, dynamic_size=False, input_name="images") -> Path:
    """A 1x1 conv producing the five YOLACT outputs for an input [B,3,S,S] (P = S*S)."""
    wdtype = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    rng = np.random.default_rng(0)
    c_out = 4 + 3 + 2 + 2  # loc, conf, coeffs, proto channels
    inits = [
        numpy_helper.from_array(rng.standard_normal((c_out, 3, 1, 1)).astype(wdtype), "w"),
        numpy_helper.from_array(np.array([0, -1, 4], np.int64), "shape_loc"),
        numpy_helper.from_array(np.array([0, -1, 3], np.int64), "shape_conf"),
        numpy_helper.from_array(np.array([0, -1, 2], np.int64), "shape_coef"),
        numpy_helper.from_array(np.array([4, 3, 2, 2], np.int64), "split"),
        numpy_helper.from_array(rng.random((size * size, 4)).astype(wdtype), "priors_value"),
    ]
    nodes = [
        helper.make_node("Conv", [input_name, "w"], ["feat"]),
        helper.make_node("Split", ["feat", "split"], ["l", "c", "k", "p"], axis=1),
        helper.make_node("Transpose", ["l"], ["l_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["l_t", "shape_loc"], ["loc"]),
        helper.make_node("Transpose", ["c"], ["c_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["c_t", "shape_conf"], ["c_r"]),
        helper.make_node("Softmax", ["c_r"], ["conf"], axis=-1),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["k_t", "shape_coef"], ["k_r"]),
        helper.make_node("Tanh", ["k_r"], ["coeffs"]),
        helper.make_node("Relu", ["p"], ["p_r"]),
        helper.make_node("Transpose", ["p_r"], ["proto"], perm=[0, 2, 3, 1]),
        helper.make_node("Identity", ["priors_value"], ["priors"]),
    ]
    s = "S" if dynamic_size else size
    graph = helper.make_graph(
        nodes,
        "tiny_yolact",
        [helper.make_tensor_value_info(input_name, elem, ["B", 3, s, s])],
        [
            helper.make_tensor_value_info("loc", elem, ["B", "P", 4]),
            helper.make_tensor_value_info("conf", elem, ["B", "P", 3]),
            helper.make_tensor_value_info("coeffs", elem, ["B", "P", 2]),
            helper.make_tensor_value_info("proto", elem, ["B", s, s, 2]),
            helper.make_tensor_value_info("priors", elem, ["P", 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_inspection(tmp_path):
    fp32 = _tiny_onnx(tmp_path / "m.onnx")
    fp16 = _tiny_onnx(tmp_path / "m.fp16.onnx", fp16=True)
    assert onnx_format.onnx_is_fp16(fp32) is False
    assert onnx_format.onnx_is_fp16(fp16) is True
    assert onnx_format.onnx_input_size(fp32) == 32
    with pytest.raises(EngineBuildError, match="static"):
        onnx_format.onnx_input_size(_tiny_onnx(tmp_path / "dyn.onnx", dynamic_size=True))
    with pytest.raises(EngineBuildError, match="no input named"):
        onnx_format.onnx_input_size(_tiny_onnx(tmp_path / "x.onnx", input_name="input"))


def test_tiny_onnx_is_valid_yolact_shaped(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = _tiny_onnx(tmp_path / "m.onnx", size=8)
    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    loc, conf, coeffs, proto, priors = sess.run(None, {"images": np.zeros((2, 3, 8, 8), np.float32)})
    assert loc.shape == (2, 64, 4) and conf.shape == (2, 64, 3) and coeffs.shape == (2, 64, 2)
    assert proto.shape == (2, 8, 8, 2) and priors.shape == (64, 4)


def test_onnxruntime_runner_reads_the_priors_of_an_earlier_export(tmp_path):
    """An export with ``priors`` as a graph output (before they were made on the host) still runs; one without
    them and without the metadata to make them is refused."""
    from trt_yolact.runtime.onnxruntime_runner import OnnxRuntimeRunner

    old = _tiny_onnx(tmp_path / "old.onnx", size=8)
    raw = OnnxRuntimeRunner(old)(torch.zeros(2, 3, 8, 8))
    assert raw.priors.shape == (64, 4) and raw.loc.shape == (2, 64, 4)
    model = onnx.load(str(old))
    model.graph.output.pop()  # no priors output, and no trt_yolact metadata
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(RunnerError, match="no priors output"):
        OnnxRuntimeRunner(tmp_path / "bare.onnx")


# --------------------------------------------------------------------------- build_engine with a fake TensorRT


class FakeTRT(types.ModuleType):
    """Just enough of the tensorrt module for build_engine's control flow."""

    def __init__(self, version="10.16.1.11", parse_ok=True, build=None, accepts_cache=lambda data: True):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls = []
        self.timing_cache_loaded = []
        self.loggers = []  # the logger each Builder and Runtime was given
        calls, fake = self.calls, self

        class Logger:
            VERBOSE, WARNING = 0, 2

            def __init__(self, severity=2):
                self.min_severity = severity

        class Network:
            def __init__(self, flags):
                self.flags = flags
                self.num_inputs = 1

            def get_input(self, i):
                return types.SimpleNamespace(name="images")

        class TimingCache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+tuned"

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.progress_monitor, self.cache = ["TF32"], [], None, None
                self.profiling_verbosity = None  # TF32: TensorRT's default

            def set_memory_pool_limit(self, pool, size):
                calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                if flag not in self.flags:
                    self.flags.append(flag)

            def clear_flag(self, flag):
                if flag in self.flags:
                    self.flags.remove(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

            def create_timing_cache(self, data):
                fake.timing_cache_loaded.append(bytes(data))
                if bytes(data).startswith(b"garbage"):
                    raise RuntimeError("unreadable timing cache")
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                if ignore_mismatch or not accepts_cache(cache.data):
                    return False  # TensorRT refuses a cache of another device
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                self.shape = (name, mn, opt, mx)

        class Builder:
            def __init__(self, logger):
                fake.loggers.append(logger)

            def create_network(self, flags=0):
                calls.append(("create_network", flags))
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls.append(
                    ("build", network.flags, list(config.flags), config.profiles[0].shape, config.profiling_verbosity)
                )
                monitor = config.progress_monitor
                if monitor is not None:
                    monitor.phase_start("Building", None, 2)
                    assert monitor.step_complete("Building", 0) and monitor.step_complete("Building", 1)
                    monitor.phase_finish("Building")
                return build(network, config) if build else bytearray(b"PLAN")

        class ParserError:
            def desc(self):
                return "unsupported operator"

            def node(self):
                return 7

            def node_name(self):
                return "/backbone/Conv_7"

            def node_operator(self):
                return "FancyConv"

            def code(self):
                return "UNSUPPORTED_NODE"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                if not parse_ok:
                    self.num_errors = 1
                return parse_ok

            def get_error(self, i):
                return ParserError()

        class IProgressMonitor:
            def __init__(self):
                pass

        class EngineInspector:
            def get_engine_information(self, fmt):
                return json.dumps({"Layers": ["conv"], "format": fmt})

        class Engine:
            def create_engine_inspector(self):
                return EngineInspector()

        class Runtime:
            def __init__(self, logger):
                fake.loggers.append(logger)

            def deserialize_cuda_engine(self, data):
                return Engine() if bytes(data) == b"PLAN" else None

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime
        self.IProgressMonitor = IProgressMonitor
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1 if version.startswith("10") else 0)
        self.BuilderFlag = (
            types.SimpleNamespace(FP16="FP16", TF32="TF32")
            if version.startswith("10")
            else types.SimpleNamespace(TF32="TF32")
        )
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
        self.LayerInformationFormat = types.SimpleNamespace(JSON="JSON")

    def builds(self):
        return [c for c in self.calls if c[0] == "build"]


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kwargs):
        fake = FakeTRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    monkeypatch.setattr(eng, "gpu_info", lambda device=None: {"name": "Fake GPU", "compute_capability": "9.0"})
    return install


@pytest.fixture
def onnx_pair(tmp_path):
    return _tiny_onnx(tmp_path / "m.onnx"), _tiny_onnx(tmp_path / "m.fp16.onnx", fp16=True)


def _leftovers(directory: Path):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_build_reuse_force_and_rebuild(fake_trt, onnx_pair, tmp_path):
    trt = fake_trt()
    fp32, fp16 = onnx_pair
    out = tmp_path / "engines" / "m.engine"
    result = build_engine(fp16, out, "1,4,8", "fp16", workspace_gib=2)
    assert not result.reused and out.read_bytes() == b"PLAN"
    meta = read_sidecar(out)
    assert meta["precision"] == "fp16" and meta["input_size"] == 32 and meta["gpu_name"] == "Fake GPU"
    assert meta["onnx_sha256"] == eng.sha256_file(fp16) and meta["tensorrt_version"] == "10.16.1.11"
    assert meta["profile"] == {"min": 1, "opt": 4, "max": 8} and "build_seconds" in meta and "built_at" in meta
    (build,) = trt.builds()
    assert build[1] == 1 << 1 and build[2] == []  # strongly typed, no precision flag
    assert build[3] == ("images", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)) and build[4] == "DETAILED"
    assert ("workspace", "WORKSPACE", 2 << 30) in trt.calls
    cache = out.parent / "m.trt10.16.1.11.fake-gpu-sm90.timing.cache"  # keyed by TensorRT version and GPU
    assert result.timing_cache == cache and cache.read_bytes() == b"+tuned" and result.timing_cache_note == ""
    assert _leftovers(out.parent) == []

    again = build_engine(fp16, out, "1,4,8", "fp16")
    assert again.reused and len(trt.builds()) == 1

    forced = build_engine(fp16, out, "1,4,8", "fp16", force=True)
    assert not forced.reused and forced.reason == "rebuild forced" and len(trt.builds()) == 2
    assert trt.timing_cache_loaded[-1] == b"+tuned"  # the persistent cache was loaded

    changed = build_engine(fp16, out, "1,4,16", "fp16")
    assert not changed.reused and "profile" in changed.reason and len(trt.builds()) == 3


def test_build_trt10_fp16_from_fp32_onnx_uses_builder_flag(fake_trt, onnx_pair, tmp_path):
    trt = fake_trt()
    build_engine(onnx_pair[0], tmp_path / "a.engine", precision="fp16", timing_cache=False)
    (build,) = trt.builds()
    assert build[1] == 0 and build[2] == ["FP16"]
    assert not list(tmp_path.glob("*.timing.cache"))


def test_build_trt11(fake_trt, onnx_pair, tmp_path):
    trt = fake_trt(version="11.4.0.106")
    with pytest.raises(PrecisionError, match="FP16 ONNX"):
        build_engine(onnx_pair[0], tmp_path / "a.engine", precision="fp16")
    assert trt.builds() == [] and not (tmp_path / "a.engine").exists()
    build_engine(onnx_pair[1], tmp_path / "b.engine", precision="fp16")
    build_engine(onnx_pair[0], tmp_path / "c.engine", precision="fp32")
    assert [(b[1], b[2]) for b in trt.builds()] == [(0, []), (0, [])]


def test_build_parser_errors_are_reported(fake_trt, onnx_pair, tmp_path, capsys):
    fake_trt(parse_ok=False)
    with pytest.raises(EngineBuildError) as info:
        build_engine(onnx_pair[1], tmp_path / "a.engine")
    assert "/backbone/Conv_7" in str(info.value) and "unsupported operator" in str(info.value)
    assert "/backbone/Conv_7" in capsys.readouterr().err
    assert not (tmp_path / "a.engine").exists()


def test_build_failure_and_interrupt_leave_no_partial_files(fake_trt, onnx_pair, tmp_path):
    out = tmp_path / "a.engine"
    fake_trt()
    build_engine(onnx_pair[1], out)
    old_sidecar = sidecar_path(out).read_text()

    fake_trt(build=lambda network, config: None)
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_engine(onnx_pair[1], out, force=True)

    def interrupt(network, config):
        raise KeyboardInterrupt

    fake_trt(build=interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_engine(onnx_pair[1], out, force=True)
    assert out.read_bytes() == b"PLAN" and sidecar_path(out).read_text() == old_sidecar
    assert _leftovers(tmp_path) == []


def test_ctrl_c_in_progress_callback_cancels_the_build(fake_trt, onnx_pair, tmp_path):
    pytest.importorskip("tqdm")

    def build(network, config):
        monitor = config.progress_monitor
        monitor.phase_start("Tactics", None, 3)

        def interrupted(n=1):
            raise KeyboardInterrupt

        monitor._bars["Tactics"].update = interrupted
        assert monitor.step_complete("Tactics", 0) is False  # TensorRT cancels the build...
        return None  # ...and returns no plan

    fake_trt(build=build)
    with pytest.raises(KeyboardInterrupt):
        build_engine(onnx_pair[1], tmp_path / "a.engine")
    assert not (tmp_path / "a.engine").exists() and _leftovers(tmp_path) == []


def test_sidecar_records_what_the_runner_makes_the_priors_from(fake_trt, onnx_pair, tmp_path):
    fake_trt()
    model = onnx.load(str(onnx_pair[1]))
    onnx.helper.set_model_props(
        model, {"config": json.dumps(TINY_CONFIG.to_dict()), "prior_grid": "[[4, 4], [2, 2]]", "other": "x"}
    )
    onnx.save(model, str(tmp_path / "meta.onnx"))
    build_engine(tmp_path / "meta.onnx", tmp_path / "m.engine")
    sidecar = read_sidecar(tmp_path / "m.engine")
    assert sidecar["prior_grid"] == [[4, 4], [2, 2]] and YolactConfig.from_dict(sidecar["config"]) == TINY_CONFIG
    assert "other" not in sidecar
    build_engine(onnx_pair[1], tmp_path / "bare.engine")  # an ONNX without our metadata: nothing to copy
    assert "prior_grid" not in read_sidecar(tmp_path / "bare.engine")


def test_timing_cache_key_names_the_tensorrt_version_and_gpu():
    key = eng.timing_cache_key("10.16.1.11", {"name": "NVIDIA H200 NVL", "compute_capability": "9.0"})
    assert key == "trt10.16.1.11.nvidia-h200-nvl-sm90"
    assert eng.timing_cache_key("11.4.0.106", None) == "trt11.4.0.106.unknown-smunknown"
    assert eng.timing_cache_key("10.16.1.11", {"name": "NVIDIA L4", "compute_capability": "8.9"}) != key


def test_another_gpu_gets_its_own_timing_cache(fake_trt, onnx_pair, tmp_path, monkeypatch):
    trt = fake_trt()
    out = tmp_path / "m.engine"
    first = build_engine(onnx_pair[1], out)
    monkeypatch.setattr(eng, "gpu_info", lambda device=None: {"name": "Other GPU", "compute_capability": "8.9"})
    second = build_engine(onnx_pair[1], out)
    assert first.timing_cache != second.timing_cache and "other-gpu-sm89" in second.timing_cache.name
    assert trt.timing_cache_loaded == [b"", b""]  # the first GPU's cache is not offered to the second
    assert first.timing_cache.is_file() and second.timing_cache.is_file()


@pytest.mark.parametrize("foreign", [b"foreign tactics", b"garbage"], ids=["refused", "unreadable"])
def test_rejected_timing_cache_is_reported_and_replaced(fake_trt, onnx_pair, tmp_path, capsys, foreign):
    trt = fake_trt(accepts_cache=lambda data: not data.startswith(b"foreign"))
    cache = tmp_path / "shared.timing.cache"
    cache.write_bytes(foreign)
    result = build_engine(onnx_pair[1], tmp_path / "m.engine", timing_cache=cache)
    assert "rejected" in result.timing_cache_note and cache.name in result.timing_cache_note
    assert read_sidecar(tmp_path / "m.engine")["timing_cache_note"] == result.timing_cache_note
    warnings = [line for line in capsys.readouterr().err.splitlines() if "timing cache" in line]
    assert len(warnings) == 1 and "rejected" in warnings[0]
    assert trt.timing_cache_loaded == [foreign, b""]  # then a fresh cache, which is saved in its place
    assert cache.read_bytes() == b"+tuned"


def test_accepted_timing_cache_gives_no_note(fake_trt, onnx_pair, tmp_path, capsys):
    fake_trt()
    cache = tmp_path / "shared.timing.cache"
    cache.write_bytes(b"tactics")
    result = build_engine(onnx_pair[1], tmp_path / "m.engine", timing_cache=cache)
    assert result.timing_cache_note == "" and "timing_cache_note" not in read_sidecar(tmp_path / "m.engine")
    assert "timing cache" not in capsys.readouterr().err and cache.read_bytes() == b"tactics+tuned"


def test_a_cache_tensorrt_refuses_even_fresh_builds_without_one(fake_trt, onnx_pair, tmp_path):
    fake_trt(accepts_cache=lambda data: False)
    result = build_engine(onnx_pair[1], tmp_path / "m.engine")
    assert "without a timing cache" in result.timing_cache_note
    assert not result.timing_cache.exists()  # nothing tuned to save


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_tf32_is_an_explicit_recorded_choice(fake_trt, onnx_pair, tmp_path, version):
    trt = fake_trt(version=version)
    out = tmp_path / "m.engine"
    build_engine(onnx_pair[0], out, precision="fp32")
    assert "TF32" not in trt.builds()[-1][2]  # TensorRT's default cleared: a true FP32 engine
    assert read_sidecar(out)["tf32"] is False and eng.DEFAULT_TF32 is False
    assert "--noTF32" in read_sidecar(out)["equivalent_commands"]["trtexec"]
    assert build_engine(onnx_pair[0], out, precision="fp32").reused
    with_tf32 = build_engine(onnx_pair[0], out, precision="fp32", tf32=True)
    assert not with_tf32.reused and "tf32 changed" in with_tf32.reason  # another engine: rebuilt
    assert "TF32" in trt.builds()[-1][2] and read_sidecar(out)["tf32"] is True
    commands = read_sidecar(out)["equivalent_commands"]
    assert "--noTF32" not in commands["trtexec"] and "--tf32" in commands["polygraphy"].split()


def _options(command: str) -> tuple[list[str], dict[str, str]]:
    """(positional words and bare flags, {--flag: value}) of a trtexec (``--k=v``) or polygraphy (``--k v``)
    command line."""
    words, values = [], {}
    parts = shlex.split(command)
    i = 0
    while i < len(parts):
        part = parts[i]
        if part.startswith("--") and "=" in part:
            key, value = part.split("=", 1)
            values[key] = value
        elif part.startswith("--") and i + 1 < len(parts) and not parts[i + 1].startswith("--"):
            values[part] = parts[i + 1]
            i += 1
        else:
            words.append(part)
        i += 1
    return words, values


@pytest.mark.parametrize(
    "version, onnx_index, precision, mode",
    [
        ("10.16.1.11", 1, "fp16", "--stronglyTyped"),
        ("10.16.1.11", 0, "fp16", "--fp16"),
        ("10.16.1.11", 0, "fp32", "--stronglyTyped"),
        ("11.4.0.106", 1, "fp16", "--stronglyTyped"),
    ],
)
def test_trtexec_command_matches_the_build(fake_trt, onnx_pair, tmp_path, version, onnx_index, precision, mode):
    fake_trt(version=version)
    onnx_path, out = onnx_pair[onnx_index], tmp_path / "engines" / "m.engine"
    result = build_engine(onnx_path, out, "2,4,8", precision, workspace_gib=1.5)
    words, values = _options(result.metadata["equivalent_commands"]["trtexec"])
    assert words[0] == "trtexec"
    assert values["--onnx"] == str(onnx_path) and values["--saveEngine"] == str(out)
    assert values["--minShapes"] == "images:2x3x32x32" and values["--optShapes"] == "images:4x3x32x32"
    assert values["--maxShapes"] == "images:8x3x32x32"
    assert values["--memPoolSize"] == "workspace:1536"  # MiB
    assert values["--timingCacheFile"] == str(result.timing_cache)
    assert mode in words and ({"--fp16", "--stronglyTyped"} - {mode}).isdisjoint(words)
    assert "--noTF32" in words and values["--profilingVerbosity"] == "detailed"
    assert read_sidecar(out)["equivalent_commands"] == result.metadata["equivalent_commands"]


def test_trtexec_command_without_timing_cache(fake_trt, onnx_pair, tmp_path):
    fake_trt()
    result = build_engine(onnx_pair[1], tmp_path / "m.engine", timing_cache=False)
    assert "--timingCacheFile" not in result.metadata["equivalent_commands"]["trtexec"]


@pytest.mark.parametrize("precision, onnx_index", [("fp16", 1), ("fp32", 0)])
def test_polygraphy_command_matches_the_build(fake_trt, onnx_pair, tmp_path, precision, onnx_index):
    fake_trt()
    onnx_path = onnx_pair[onnx_index]
    result = build_engine(onnx_path, tmp_path / "m.engine", "1,4,8", precision)
    words, values = _options(result.metadata["equivalent_commands"]["polygraphy"])
    assert words[:3] == ["polygraphy", "run", str(onnx_path)] and {"--trt", "--onnxrt"} <= set(words)
    assert values["--input-shapes"] == "images:[4,3,32,32]"
    assert values["--trt-min-shapes"] == "images:[1,3,32,32]" and values["--trt-max-shapes"] == "images:[8,3,32,32]"
    assert "--strongly-typed" in words and "--tf32" not in words
    atol, rtol = float(values["--atol"]), float(values["--rtol"])
    assert (atol, rtol) == eng.POLYGRAPHY_TOLERANCES[precision]
    if precision == "fp16":  # loose enough for FP16 rounding, tight enough to catch a broken engine
        assert 1e-3 <= atol <= 0.1 and 1e-3 <= rtol <= 0.05
    else:
        assert atol <= 1e-3 and rtol <= 1e-2


def test_one_tensorrt_logger_for_the_process(fake_trt, onnx_pair, tmp_path):
    trt = fake_trt()
    build_engine(onnx_pair[1], tmp_path / "a.engine", verbose=True)
    build_engine(onnx_pair[0], tmp_path / "b.engine", precision="fp32")
    engine_layers(tmp_path / "a.engine")  # a runtime, as the runner makes
    assert len(trt.loggers) == 3 and all(logger is trt.loggers[0] for logger in trt.loggers)
    assert trt.loggers[0] is engine_format.process_logger(trt)
    assert trt.loggers[0].min_severity == trt.Logger.WARNING  # a verbose build lowers it for itself only
    other = fake_trt()
    assert engine_format.process_logger(other) is not trt.loggers[0]  # one per tensorrt module


def test_stale_check_accepts_profile_objects(engine_file):
    write_sidecar(engine_file, _expected())
    assert is_engine_stale(engine_file, dict(_expected(), profile=BuildProfile(1, 4, 8))) == (False, "up to date")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without GPU")
def test_runner_errors_without_gpu(fake_trt, tmp_path):
    from trt_yolact.errors import RunnerError
    from trt_yolact.runtime.tensorrt_runner import TensorRTRunner

    fake_trt()
    with pytest.raises(RunnerError, match="python -m trt_yolact.build"):
        TensorRTRunner(tmp_path / "absent.engine")
    (tmp_path / "a.engine").write_bytes(b"PLAN")
    with pytest.raises(RunnerError, match="no CUDA device"):
        TensorRTRunner(tmp_path / "a.engine")
    with pytest.raises(RunnerError, match="CUDA devices only"):
        TensorRTRunner(tmp_path / "a.engine", device="cpu")
    assert TensorRTRunner.backend == TensorRTRunner.name == "tensorrt"


class _RecordingStream:
    """A CUDA stream stand-in that logs what is ordered on it, in one event list shared by all streams."""

    def __init__(self, name: str, events: list):
        self.name, self.events = name, events
        self.cuda_stream = hash(name) & 0xFFFF

    def wait_stream(self, other):
        self.events.append(("wait", self.name, other.name))

    def synchronize(self):
        self.events.append(("synchronize", self.name))


def _runner_on_fake_streams(monkeypatch, events):
    """A TensorRTRunner with a fake context and streams, on CPU tensors (no GPU needed)."""
    import contextlib

    from trt_yolact.runtime.tensorrt_runner import TensorRTRunner

    caller = _RecordingStream("caller", events)

    class Context:
        def set_input_shape(self, name, shape):
            self.shape = shape
            return True

        def set_tensor_address(self, name, address):
            events.append(("address", name))

        def get_tensor_shape(self, name):
            return {"priors": (6, 4)}.get(name, (self.shape[0], 6, 4))

        def execute_async_v3(self, stream_handle):
            events.append(("execute", stream_handle))
            return True

    runner = object.__new__(TensorRTRunner)
    runner.engine_path = Path("m.engine")
    runner._device = torch.device("cpu")
    runner._context = Context()
    runner._stream = _RecordingStream("runner", events)
    runner._output_dtypes = dict.fromkeys(("loc", "conf", "coeffs", "proto", "priors"), torch.float32)
    runner._host_outputs = {}
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: caller)
    monkeypatch.setattr(
        torch.Tensor, "record_stream", lambda tensor, stream: events.append(("record", stream.name)), raising=False
    )
    return runner


def test_runner_enqueues_on_its_own_stream_between_the_callers_work(monkeypatch):
    events = []
    runner = _runner_on_fake_streams(monkeypatch, events)
    outputs = runner._infer(torch.zeros(2, 3, 4, 4))
    assert set(outputs) == {"loc", "conf", "coeffs", "proto", "priors"} and outputs["loc"].shape == (2, 6, 4)
    (execute,) = [e for e in events if e[0] == "execute"]
    assert execute[1] == runner._stream.cuda_stream  # never the caller's (the legacy default) stream
    order = [e for e in events if e[0] in ("wait", "execute")]
    # the runner's stream waits for the input, the caller's stream for the outputs
    assert order == [("wait", "runner", "caller"), execute, ("wait", "caller", "runner")]
    # every buffer (the input and the five outputs) is kept alive for the runner's stream, before execution
    records = events[: events.index(execute)]
    assert records.count(("record", "runner")) == 6


def test_runner_makes_the_priors_an_engine_leaves_out(monkeypatch):
    from trt_yolact.config import make_priors
    from trt_yolact.deploy.onnx_format import NETWORK_OUTPUT_NAMES

    events = []
    runner = _runner_on_fake_streams(monkeypatch, events)
    runner._output_dtypes = dict.fromkeys(NETWORK_OUTPUT_NAMES, torch.float32)  # a new export's engine
    config = TINY_CONFIG
    grid = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    runner.metadata = {"config": config.to_dict(), "prior_grid": [list(g) for g in grid]}
    runner._host_outputs = runner._made_on_host()
    outputs = runner._infer(torch.zeros(2, 3, 4, 4))
    assert list(outputs) == ["loc", "conf", "coeffs", "proto", "priors"]
    assert torch.equal(outputs["priors"], torch.from_numpy(make_priors(config, grid)))
    runner.metadata = {"config": config.to_dict()}  # a sidecar without the grid: no guessing
    with pytest.raises(RunnerError, match="prior_grid.*python -m trt_yolact.build"):
        runner._made_on_host()


def test_runner_release_waits_for_its_stream(monkeypatch):
    events = []
    runner = _runner_on_fake_streams(monkeypatch, events)
    runner._engine = runner._runtime = object()
    runner._deactivate()
    assert events == [("synchronize", "runner")] and not hasattr(runner, "_context")


def test_build_missing_onnx_and_bad_arguments(fake_trt, tmp_path, onnx_pair):
    fake_trt()
    with pytest.raises(FileNotFoundError):
        build_engine(tmp_path / "absent.onnx", tmp_path / "a.engine")
    with pytest.raises(ValueError):
        build_engine(onnx_pair[0], tmp_path / "a.engine", profile="8,4,1")
    with pytest.raises(ValueError):
        build_engine(onnx_pair[0], tmp_path / "a.engine", workspace_gib=0)


def test_tensorrt_unavailable(monkeypatch, onnx_pair, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(TensorRTUnavailable) as info:
        build_engine(onnx_pair[0], tmp_path / "a.engine")
    assert "\n" not in str(info.value) and "TensorRT is not available" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_unsupported_tensorrt_version(fake_trt, onnx_pair, tmp_path):
    fake_trt(version="8.6.1")
    with pytest.raises(TensorRTUnavailable, match="not supported"):
        build_engine(onnx_pair[0], tmp_path / "a.engine", precision="fp32")


def test_engine_layers(fake_trt, onnx_pair, tmp_path):
    fake_trt()
    out = tmp_path / "a.engine"
    build_engine(onnx_pair[1], out)
    assert engine_layers(out) == {"Layers": ["conv"], "format": "JSON"}
    out.write_bytes(b"garbage")
    with pytest.raises(RunnerError, match="from its checkpoint"):
        engine_layers(out)


# --------------------------------------------------------------------------- real TensorRT (GPU machines)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_build_and_run(tmp_path):
    pytest.importorskip("tensorrt", reason="needs the TensorRT Python package (GPU machines only)")
    ort = pytest.importorskip("onnxruntime")
    from trt_yolact.runtime.tensorrt_runner import TensorRTRunner

    path = _tiny_onnx(tmp_path / "m.onnx", size=32)
    result = build_engine(path, tmp_path / "m.engine", "1,2,4", "fp32", workspace_gib=1)
    assert not result.reused and build_engine(path, tmp_path / "m.engine", "1,2,4", "fp32").reused
    runner = TensorRTRunner(tmp_path / "m.engine")
    assert runner.backend == "tensorrt" and runner.max_batch == 4 and runner.input_size == 32
    images = torch.randn(6, 3, 32, 32)  # above the max batch: two chunks
    out = runner(images.cuda())
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})
    for got, want in zip(out, ref):
        assert got.is_cuda
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-3, atol=1e-3)
    layers = engine_layers(tmp_path / "m.engine")
    assert layers
