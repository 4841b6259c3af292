"""Exports with the post-processing in the graph, run through the one Predictor, give the detections of the host
post-processing: on the shipped demo model and generated shapes images (ONNX Runtime), an image without any
detection included; settings the graph cannot honour are refused; eval and bench show both side by side; the
TensorRT side (engine of the graph export, the runner reading its interface) with the fake TensorRT module."""

from __future__ import annotations

import json
import types
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from trt_yolact.config import Int8Options, PostprocessConfig
from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.deploy.artifacts import ArtifactChain
from trt_yolact.deploy.engine_format import read_sidecar, tensorrt_unavailable_reason
from trt_yolact.deploy.onnx_format import onnx_precision, read_onnx_metadata
from trt_yolact.deploy.triton import config_pbtxt
from trt_yolact.errors import PrecisionError, UsageError
from trt_yolact.inference.calibration_images import int8_setup
from trt_yolact.inference.graph_detections import check_graph_settings, graph_to_detections
from trt_yolact.inference.images import read_image
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.sources import comparison_configurations, open_runner
from trt_yolact.model.checkpoint import ModelSource
from trt_yolact.runtime.open import open_artifact
from trt_yolact.structures import GRAPH_OUTPUT_NAMES, OUTPUT_NAMES, GraphDetections

BLANK = np.full((200, 300, 3), 128, np.uint8)  # the demo model finds nothing on plain gray


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    """40 generated test images (as ``python -m trt_yolact.data.shapes --train 0 --val 40 --seed 12345``)."""
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 0, 40, 256, 12345)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return ArtifactChain(ModelSource.load("yolact_shapes"), tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def exports(chain):
    """The demo model's raw export and its export with the (default) post-processing in the graph."""
    return chain.onnx("fp32").path, chain.onnx("fp32", PostprocessConfig()).path


@pytest.fixture(scope="module")
def images(shapes_set):
    return [read_image(p) for p in sorted(shapes_set["val_images"].iterdir())]


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_same_detections(host, graph):
    """Same detections in the same order: classes, pixel boxes, scores and relative boxes to float tolerance,
    full-resolution masks of IoU ~1."""
    assert len(host) == len(graph)
    for h, g in zip(host, graph):
        assert h.image_size == g.image_size and len(h) == len(g)
        assert g.classes.tolist() == h.classes.tolist()
        assert (g.boxes - h.boxes).abs().max().item() <= 1 if len(h) else g.boxes.shape == (0, 4)
        torch.testing.assert_close(g.scores, h.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(g.boxes_relative, h.boxes_relative, rtol=0, atol=1e-5)
        assert g.masks.shape == h.masks.shape and g.masks.dtype == h.masks.dtype
        if len(h) and h.masks.dtype == torch.bool:
            assert _mask_iou(g.masks, h.masks).min().item() >= 0.99
        elif len(h):
            torch.testing.assert_close(g.masks, h.masks, rtol=0, atol=1e-4)


def _predict(path, config, images, cfg=PostprocessConfig(), batch=4):
    predictor = Predictor(open_artifact(path), config, cfg)
    with predictor.runner:
        return [d for start in range(0, len(images), batch) for d in predictor(images[start : start + batch])]


def test_graph_export_on_onnxruntime_gives_the_host_detections(exports, images):
    raw, graph = exports
    config = ModelSource.load("yolact_shapes").config
    batch = [*images, BLANK]  # the last batch holds an image without any detection, beside images with some
    host, in_graph = _predict(raw, config, batch), _predict(graph, config, batch)
    assert_same_detections(host, in_graph)
    assert len(host[-1]) == 0 and in_graph[-1].masks.shape == (0, 200, 300)
    assert sum(len(d) for d in host) > 100 and sum(1 for d in host if len(d)) >= 30  # a real comparison
    assert all(d.scores.dtype == torch.float32 and d.classes.dtype == torch.int64 for d in in_graph)


def test_the_static_pipeline_takes_a_graph_export_too(exports, images):
    """The device pipeline (frames of one size) with the graph export: the detections of the dynamic one."""
    import cv2

    raw, graph = exports
    config = ModelSource.load("yolact_shapes").config
    frames = [cv2.resize(image, (300, 240)) for image in images[:4]]
    with open_artifact(graph) as runner:
        static = Predictor(runner, config, pipeline="static").predict(frames)
    assert static.graph is not None and static.raw is None
    host = _predict(raw, config, frames)
    assert_same_detections(host, static.detections)
    assert sum(len(d) for d in host) > 10


def test_what_the_host_applies_after_selection_the_graph_path_applies_too(exports, images):
    """Score threshold, fewer detections and low-resolution masks, on a graph exported with the defaults."""
    raw, graph = exports
    config = ModelSource.load("yolact_shapes").config
    some = images[:6]
    for cfg in (
        PostprocessConfig(score_threshold=0.3),
        PostprocessConfig(max_detections=3),
        PostprocessConfig(full_resolution_masks=False),
    ):
        host, in_graph = _predict(raw, config, some, cfg), _predict(graph, config, some, cfg)
        assert_same_detections(host, in_graph)
    assert all(len(d) <= 3 for d in _predict(graph, config, some, PostprocessConfig(max_detections=3)))


def test_settings_the_graph_cannot_honour_are_refused(exports):
    exported = PostprocessConfig()
    check_graph_settings(exported, PostprocessConfig(score_threshold=0.5, max_detections=10), "m")
    check_graph_settings(None, PostprocessConfig(nms_threshold=0.7), "m")  # the graph does not say: no check
    for wanted, named in (
        (PostprocessConfig(nms_threshold=0.7), "nms_threshold 0.7 (graph: 0.5)"),
        (PostprocessConfig(top_k=50), "top_k 50"),
        (PostprocessConfig(cross_class_nms=True), "cross_class_nms"),
        (PostprocessConfig(max_detections=101), "max_detections 101 (graph: 100 slots)"),
    ):
        with pytest.raises(UsageError, match=named.replace("(", r"\(").replace(")", r"\)")):
            check_graph_settings(exported, wanted, "m")
    runner = open_artifact(exports[1])
    with pytest.raises(UsageError, match="exported with other settings"):
        Predictor(runner, ModelSource.load("yolact_shapes").config, PostprocessConfig(conf_threshold=0.2))


def test_graph_to_detections_cuts_slots_by_count_and_threshold():
    """Slots past num_dets are never detections, even with scores in them."""
    graph = GraphDetections(
        num_dets=torch.tensor([2, 0], dtype=torch.int32),
        boxes=torch.tensor([[[0.1, 0.1, 0.5, 0.5]] * 3, [[0.0, 0.0, 1.0, 1.0]] * 3]),
        scores=torch.tensor([[0.9, 0.2, 0.8], [0.7, 0.6, 0.5]]),
        classes=torch.tensor([[1, 0, 2], [3, 3, 3]], dtype=torch.int32),
        masks=torch.ones(2, 3, 4, 4),
    )
    uncropped = PostprocessConfig(crop_masks=False)  # the masks here are not cropped: all of each one counts
    first, second = graph_to_detections(graph, [(10, 20), (8, 8)], uncropped)
    assert first.classes.tolist() == [1, 0] and first.boxes.tolist() == [[2, 1, 10, 5]] * 2 and len(second) == 0
    assert first.masks.shape == (2, 10, 20) and bool(first.masks.all()) and second.masks.shape == (0, 8, 8)
    (thresholded, _) = graph_to_detections(graph, [(10, 20), (8, 8)], replace(uncropped, score_threshold=0.5))
    assert thresholded.scores.tolist() == pytest.approx([0.9])


def test_deployed_graph_export_opens_as_any_weights(exports):
    runner, config = open_runner(exports[1])
    with runner:
        assert runner.postprocess == "graph" and runner.postprocess_config == PostprocessConfig()
        assert config.name == "yolact_shapes" and runner.output_names == GRAPH_OUTPUT_NAMES


def test_comparisons_put_host_and_graph_side_by_side():
    triples, left_out = comparison_configurations(("torch", "onnxruntime"), ("fp32", "int8"), ("host", "graph"))
    assert triples == [
        ("torch", "fp32", "host"),
        ("onnxruntime", "fp32", "host"),
        ("onnxruntime", "fp32", "graph"),
        ("onnxruntime", "int8", "host"),
    ]
    assert any("torch fp32 graph" in line for line in left_out) and any("int8 graph" in line for line in left_out)
    assert comparison_configurations(("tensorrt",), ("int8",), ("graph",)) == ([("tensorrt", "int8", "graph")], [])
    with pytest.raises(UsageError):
        comparison_configurations(("onnxruntime",), ("fp32",), ("device",))


def test_eval_rows_of_both_post_processings_have_equal_ap(shapes_set, tmp_path, capsys):
    from trt_yolact.eval import main as eval_main

    out = tmp_path / "eval.json"
    args = ["--weights", "yolact_shapes", "--backends", "onnxruntime", "--postprocess", "host,graph"]
    args += ["--ann", str(shapes_set["val_annotations"]), "--images", str(shapes_set["val_images"])]
    assert eval_main([*args, "--cache", str(tmp_path / "cache"), "--json", str(out), "--max-ap-drop", "0.01"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["postprocess"]) for r in rows] == [
        ("torch", "host"),
        ("onnxruntime", "host"),
        ("onnxruntime", "graph"),
    ]
    host, graph = rows[1], rows[2]
    assert graph["mask_ap"] > 0.3 and abs(graph["mask_ap"] - host["mask_ap"]) <= 1e-4
    assert abs(graph["bbox_ap"] - host["bbox_ap"]) <= 1e-4
    assert " graph " in capsys.readouterr().out


def test_bench_rows_of_both_post_processings(tmp_path):
    from trt_yolact.bench import main as bench_main

    out = tmp_path / "bench.json"
    args = ["--weights", "yolact_shapes", "--backends", "onnxruntime", "--postprocess", "host,graph", "--batch", "2"]
    assert bench_main([*args, "--iters", "1", "--warmup", "1", "--cache", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["postprocess"], r["batch"]) for r in rows] == [("host", 2), ("graph", 2)]
    assert all(r["fps"] > 0 for r in rows)


# ------------------------------------------------------------------------------ TensorRT, with the fake module
@pytest.fixture(scope="module")
def int8_chain(tmp_path_factory):
    """The demo model's artifact chain with INT8 calibrated on 8 generated images."""
    source = ModelSource.load("yolact_shapes")
    setup = int8_setup(Int8Options(calib_images=8), source)
    return ArtifactChain(source, tmp_path_factory.mktemp("int8"), int8=setup)


def test_the_int8_graph_export_is_the_tensorrt_flavour_with_the_host_detections(int8_chain, images):
    """The graph export of the TensorRT INT8 flavour quantizes the network as the raw one does: in ONNX Runtime
    both give the same detections (the raw one through the host post-processing)."""
    graph = int8_chain.int8_onnx("tensorrt", postprocess=PostprocessConfig())
    raw = int8_chain.int8_onnx("tensorrt")
    assert graph.path.name == "yolact_shapes.fused.postprocess.int8-trt.onnx" and graph.postprocess == "graph"
    assert onnx_precision(graph.path) == "int8" and read_onnx_metadata(graph.path)["postprocess"] == "graph"
    config = int8_chain.source.config
    assert_same_detections(_predict(raw.path, config, images[:12]), _predict(graph.path, config, images[:12]))
    with pytest.raises(PrecisionError, match="ONNX Runtime INT8 flavour holds the network only"):
        int8_chain.int8_onnx("onnxruntime", postprocess=PostprocessConfig())


def test_the_engine_of_the_graph_export_is_built_from_it_and_records_it(int8_chain, tmp_path, monkeypatch):
    from test_engine_builder import FakeTRT

    import trt_yolact.deploy.tensorrt_build as builder

    fake = FakeTRT()
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake)
    monkeypatch.setattr(builder, "gpu_info", lambda device=None: {"name": "Fake GPU", "compute_capability": "9.0"})
    chain = int8_chain
    chain.engine_folder = tmp_path
    graph = PostprocessConfig()
    engine = chain.engine("fp16", "1,2,4", postprocess=graph)
    raw_engine = chain.engine("fp16", "1,2,4")
    assert engine.path.name == "yolact_shapes.fused.postprocess.fp16.engine" and engine.postprocess == "graph"
    assert raw_engine.path.name == "yolact_shapes.fused.fp16.engine" and raw_engine.postprocess == "none"
    sidecar = read_sidecar(engine.path)
    assert sidecar["onnx_file"] == "yolact_shapes.fused.postprocess.fp16.onnx" and sidecar["precision"] == "fp16"
    assert sidecar["postprocess"] == "graph" and PostprocessConfig(**sidecar["postprocess_config"]) == graph
    assert "postprocess" not in read_sidecar(raw_engine.path) and len(fake.builds()) == 2
    int8 = chain.engine("int8", "1,2,4", postprocess=graph)  # from the TensorRT INT8 flavour of the graph export
    assert int8.path.name == "yolact_shapes.fused.postprocess.int8-trt.engine" and int8.postprocess == "graph"
    assert read_sidecar(int8.path)["onnx_file"] == "yolact_shapes.fused.postprocess.int8-trt.onnx"
    assert [b[1] for b in fake.builds()] == [1 << 1] * 3  # strongly typed from the FP16 and the Q/DQ ONNX


def test_build_checks_every_graph_export_as_the_others(tmp_path):
    """An INT8 build with the graph post-processing: its FP32, FP16 and INT8 (TensorRT flavour) graph exports
    are checked against torch FP32 like the raw ones; both engines are reported skipped without TensorRT."""
    from test_int8 import _tiny_shapes_checkpoint

    from trt_yolact.metrics.verify import BuildOptions, build_and_verify

    options = BuildOptions(out_dir=tmp_path, precision="int8", graph_postprocess=True, repeats=1)
    options = replace(options, int8=Int8Options(calib_images=8))
    report = build_and_verify(str(_tiny_shapes_checkpoint(tmp_path)), options)
    checked = {check.name: check for check in report.artifacts}
    for name, precision in (("", "fp32"), (".fp16", "fp16"), (".int8-trt", "int8")):
        graph, raw = checked[f"tiny_shapes.fused.postprocess{name}.onnx"], checked[f"tiny_shapes.fused{name}.onnx"]
        assert graph.precision == precision and graph.note.startswith("graph post-processing")
        assert graph.detection_agreement == raw.detection_agreement and graph.same_detections == raw.same_detections
        assert graph.max_abs_error == {} and raw.max_abs_error
    if tensorrt_unavailable_reason() is not None:
        assert [line.split(" skipped")[0] for line in report.skipped] == [
            "TensorRT engine",
            "TensorRT engine with the graph post-processing",
        ]


class _FakeEngine:
    """The interface of an ICudaEngine the runner reads: its I/O tensors and the input's profile."""

    def __init__(self, trt, outputs):
        self.trt = trt
        self.tensors = [("images", trt.DataType.FLOAT, trt.TensorIOMode.INPUT)] + [
            (
                name,
                trt.DataType.INT32 if name in ("num_dets", "classes") else trt.DataType.FLOAT,
                trt.TensorIOMode.OUTPUT,
            )
            for name in outputs
        ]
        self.num_io_tensors = len(self.tensors)
        self.device_memory_size_v2 = 1 << 20

    def get_tensor_name(self, i):
        return self.tensors[i][0]

    def get_tensor_dtype(self, name):
        return next(t[1] for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name):
        return next(t[2] for t in self.tensors if t[0] == name)

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 3, 320, 320), (4, 3, 320, 320), (8, 3, 320, 320)]


@pytest.mark.parametrize("outputs, kind", [(GRAPH_OUTPUT_NAMES, "graph"), (OUTPUT_NAMES, "none")])
def test_the_tensorrt_runner_tells_a_graph_engine_by_its_outputs(tmp_path, outputs, kind):
    from test_engine_builder import FakeTRT

    from trt_yolact.runtime.tensorrt_runner import TensorRTRunner

    trt = FakeTRT()
    names = ("FLOAT", "HALF", "BF16", "INT32", "INT64", "INT8", "UINT8", "BOOL")
    trt.DataType = types.SimpleNamespace(**{n: n for n in names})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(b"PLAN")
    runner = TensorRTRunner.__new__(TensorRTRunner)  # no GPU here: the interface alone, as _activate reads it
    runner.engine_path, runner._engine = engine_path, _FakeEngine(trt, outputs)
    runner.metadata = {"precision": "fp16", "postprocess_config": asdict(PostprocessConfig(top_k=50))}
    runner._read_interface(trt)
    assert runner.postprocess == kind and tuple(runner.output_names) == tuple(outputs)
    assert (runner.min_batch, runner.max_batch, runner.input_size, runner.precision) == (1, 8, 320, "fp16")
    assert runner.postprocess_config == (PostprocessConfig(top_k=50) if kind == "graph" else None)


def test_the_graph_engine_is_a_plan_model_of_the_triton_repository(chain, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from trt_yolact.deploy.artifacts import Artifact
    from trt_yolact.metrics.verify import BuildOptions, triton_models

    options = BuildOptions(graph_postprocess=True, triton_dir=tmp_path)
    engine = Artifact(tmp_path / "e.engine", "engine", "fp16")
    graph_engine = Artifact(tmp_path / "g.engine", "engine", "fp16", "graph")
    models = triton_models(chain, options, engine, graph_engine)
    names = ["yolact_shapes_onnx", "yolact_shapes", "yolact_shapes_postprocess_onnx", "yolact_shapes_postprocess"]
    assert [m.name for m in models] == names
    plan = models[-1]
    config = text_format.Parse(config_pbtxt(plan), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and plan.source == graph_engine.path
    assert [t.name for t in config.output] == list(GRAPH_OUTPUT_NAMES)
    assert [m.name for m in triton_models(chain, options, engine)] == names[:3]  # no graph engine built
