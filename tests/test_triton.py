"""The Triton model repository: each config.pbtxt parses into Triton's own ModelConfig message (from
tritonclient) and matches the artifact it serves; the repository is written whole."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from trt_yolact.build import main as build_main
from trt_yolact.config import PostprocessConfig
from trt_yolact.deploy.onnx_export import export_onnx
from trt_yolact.deploy.tensorrt_build import BuildProfile
from trt_yolact.deploy.triton import TRITON_TYPES, config_pbtxt, model_name, triton_model, write_repository
from trt_yolact.errors import ExportError
from trt_yolact.model.checkpoint import load_model

PROFILE = BuildProfile(1, 4, 8)


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    """The tiny model's raw export (dynamic batch), graph post-processing export and a fixed-batch export."""
    model = load_model(tiny)
    out = tmp_path_factory.mktemp("triton-onnx")
    return {
        "raw": export_onnx(model, out / "tiny.onnx").path,
        "graph": export_onnx(model, out / "tiny.postprocess.onnx", postprocess=PostprocessConfig()).path,
        "fixed": export_onnx(model, out / "tiny.b2.onnx", batch_dynamic=False, batch_size=2).path,
    }


def parsed(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def onnx_tensors(path) -> dict[str, tuple[str, list[int | str]]]:
    """{name: (Triton data type, ONNX dims with 'batch' for the dynamic axis)} of every input and output."""
    graph = onnx.load(str(path)).graph
    return {
        v.name: (
            TRITON_TYPES[v.type.tensor_type.elem_type],
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in [*graph.input, *graph.output]
    }


def assert_matches_onnx(config: model_config_pb2.ModelConfig, onnx_path, batched: bool) -> None:
    want = onnx_tensors(onnx_path)
    declared = list(config.input) + list(config.output)
    assert sorted(t.name for t in declared) == sorted(want)
    for tensor in declared:
        data_type, dims = want[tensor.name]
        assert model_config_pb2.DataType.Name(tensor.data_type) == data_type
        if batched:
            assert dims[0] == "batch"
            dims = dims[1:]
        if dims:
            assert list(tensor.dims) == dims and not tensor.HasField("reshape")
        else:  # [B]: one element per image, reshaped to a scalar
            assert list(tensor.dims) == [1] and list(tensor.reshape.shape) == []


def test_onnx_model_config_parses_and_matches_the_export(exports):
    model = triton_model("tiny_onnx", exports["raw"], exports["raw"], PROFILE)
    config = parsed(config_pbtxt(model))
    assert config.name == "tiny_onnx" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8  # the profile's max
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # opt and max
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (1, "KIND_GPU")
    ]
    assert [t.name for t in config.output] == ["loc", "conf", "coeffs", "proto"]  # no unbatched priors
    assert_matches_onnx(config, exports["raw"], batched=True)
    assert [list(t.dims) for t in config.input] == [[3, 64, 64]]


def test_plan_model_config_takes_the_interface_of_its_onnx(exports, tmp_path):
    engine = tmp_path / "tiny.fp16.engine"
    model = triton_model("tiny", engine, exports["raw"], BuildProfile(2, 2, 16))
    config = parsed(config_pbtxt(model))
    assert config.platform == "tensorrt_plan" and model.filename == "model.plan" and model.source == engine
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [2, 16]
    assert_matches_onnx(config, exports["raw"], batched=True)


def test_graph_postprocess_config_reshapes_its_per_image_count(exports):
    config = parsed(config_pbtxt(triton_model("tiny_postprocess_onnx", exports["graph"], exports["graph"], PROFILE)))
    assert [t.name for t in config.output] == ["num_dets", "boxes", "scores", "classes", "masks"]
    num_dets = config.output[0]
    assert list(num_dets.dims) == [1] and num_dets.HasField("reshape") and list(num_dets.reshape.shape) == []
    assert model_config_pb2.DataType.Name(num_dets.data_type) == "TYPE_INT32"
    assert_matches_onnx(config, exports["graph"], batched=True)


def test_fixed_batch_export_keeps_its_batch_axis(exports):
    config = parsed(config_pbtxt(triton_model("tiny_b2", exports["fixed"], exports["fixed"], PROFILE)))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, 64, 64]
    assert_matches_onnx(config, exports["fixed"], batched=False)


def test_an_unbatched_output_is_refused(exports, tmp_path):
    """Triton batches every tensor on its first axis: an export with priors [P, 4] as an output cannot serve."""
    model = onnx.load(str(exports["raw"]))
    value = onnx.numpy_helper.from_array(np.zeros((10, 4), np.float32))
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["priors"], value=value))
    model.graph.output.append(onnx.helper.make_tensor_value_info("priors", onnx.TensorProto.FLOAT, [10, 4]))
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ExportError, match="'priors' has no batch axis"):
        triton_model("old", tmp_path / "old.onnx", tmp_path / "old.onnx", PROFILE)


def test_model_names():
    assert model_name("yolact_shapes") == "yolact_shapes" and model_name("my model.v2") == "my_model_v2"
    with pytest.raises(ExportError):
        model_name("...")


def test_repository_layout_is_written_whole(exports, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other_model" / "1").mkdir(parents=True)  # someone else's model: kept
    (repo / "tiny_onnx" / "2").mkdir(parents=True)  # an old version of ours: replaced whole
    models = [
        triton_model("tiny_onnx", exports["raw"], exports["raw"], PROFILE),
        triton_model("tiny_postprocess_onnx", exports["graph"], exports["graph"], PROFILE),
    ]
    folders = write_repository(repo, models)
    assert folders == [repo / "tiny_onnx", repo / "tiny_postprocess_onnx"]
    assert sorted(p.name for p in repo.iterdir()) == ["other_model", "tiny_onnx", "tiny_postprocess_onnx"]
    assert sorted(p.name for p in (repo / "tiny_onnx").iterdir()) == ["1", "config.pbtxt"]
    assert (repo / "tiny_onnx" / "1" / "model.onnx").read_bytes() == exports["raw"].read_bytes()
    assert parsed((repo / "tiny_postprocess_onnx" / "config.pbtxt").read_text()).name == "tiny_postprocess_onnx"

    missing = triton_model("tiny", tmp_path / "absent.engine", exports["raw"], PROFILE)
    with pytest.raises(FileNotFoundError):  # a failure half-way leaves the repository as it was
        write_repository(repo, [triton_model("new_onnx", exports["raw"], exports["raw"], PROFILE), missing])
    assert sorted(p.name for p in repo.iterdir()) == ["other_model", "tiny_onnx", "tiny_postprocess_onnx"]
    with pytest.raises(ExportError, match="two Triton models"):
        write_repository(repo, models + models[:1])


def test_build_writes_the_triton_repository(tiny, tmp_path, capsys, monkeypatch):
    from trt_yolact.metrics import verify

    monkeypatch.setattr(verify, "tensorrt_unavailable_reason", lambda: "no TensorRT in this test")
    repo = tmp_path / "triton"
    args = ["--weights", str(tiny), "--out", str(tmp_path / "export"), "--engines", str(tmp_path / "engines")]
    assert build_main([*args, "--repeats", "1", "--no-fuse", "--triton", str(repo)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "export" / "tiny.build.json").read_text())
    assert report["triton_models"] == [str(repo / "tiny_onnx")] and sorted(p.name for p in repo.iterdir()) == [
        "tiny_onnx"
    ]
    assert f"Triton model repository: {repo / 'tiny_onnx'}" in printed
    # no engine: the ONNX model only, and one line says so
    assert "Triton plan model tiny skipped: no TensorRT engine was built" in printed.splitlines()
    config = parsed((repo / "tiny_onnx" / "config.pbtxt").read_text())
    assert_matches_onnx(config, repo / "tiny_onnx" / "1" / "model.onnx", batched=True)
    assert config.max_batch_size == 8  # build's default profile 1,4,8
