"""ONNX export: parity with torch (raw outputs and graph post-processing), metadata, FP16, runner, CLI."""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import onnx
import pytest
import torch

from trt_yolact import __version__
from trt_yolact.config import BackboneConfig, PostprocessConfig, YolactConfig
from trt_yolact.deploy.onnx_export import export_onnx
from trt_yolact.deploy.onnx_format import (
    GRAPH_OUTPUT_NAMES,
    NETWORK_OUTPUT_NAMES,
    RAW_OUTPUT_NAMES,
    onnx_input_size,
    onnx_is_fp16,
    prior_boxes,
    read_onnx_metadata,
)
from trt_yolact.deploy.onnx_fp16 import convert_fp16
from trt_yolact.deploy.onnx_postprocess import GraphPostprocess
from trt_yolact.errors import ExportError, RunnerError
from trt_yolact.export import main as export_main
from trt_yolact.files import sha256_file
from trt_yolact.inference.postprocess import assemble_masks, select_detections
from trt_yolact.inference.preprocess import preprocess
from trt_yolact.model.checkpoint import save_checkpoint
from trt_yolact.model.yolact import Yolact
from trt_yolact.runtime.onnxruntime_runner import OnnxRuntimeRunner
from trt_yolact.structures import RawOutputs

LOW_RES = PostprocessConfig(full_resolution_masks=False)


def runner(path) -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner(path, threads=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, reference_dir, fixture_model):
    """The fixture model exported once: FP32 (dynamic batch), its FP16 version, and the graph post-processing."""
    out = tmp_path_factory.mktemp("export")
    checkpoint = reference_dir / "yolact_fixture.pth"
    fp32 = export_onnx(fixture_model, out / "model.onnx", source_checkpoint=checkpoint)
    fp16 = convert_fp16(fp32.path, out / "model.fp16.onnx")
    graph = export_onnx(fixture_model, out / "model.postprocess.onnx", postprocess=PostprocessConfig())
    return {"fp32": fp32, "fp16": fp16, "graph": graph, "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def images(reference_dir, fixture_model):
    pictures = [cv2.imread(str(reference_dir / name)) for name in ("chelsea.png", "shapes.png")]
    pictures.append(cv2.flip(pictures[0], 1))
    batch, sizes = preprocess(pictures, fixture_model.config)
    with torch.no_grad():
        raw = fixture_model(batch)
    return batch, sizes, raw


def assert_raw_close(got: RawOutputs, want: RawOutputs, rtol: float, atol: float) -> None:
    for name, g, w in zip(RawOutputs._fields, got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=rtol, atol=atol, err_msg=name)


# ------------------------------------------------------------------------------------------ raw parity
def test_fp32_onnx_matches_torch_at_batch_1_and_3(exported, images):
    batch, _, raw = images
    ort = runner(exported["fp32"].path)
    assert ort.backend == "onnxruntime" and ort.precision == "fp32" and ort.input_size == 320
    assert ort.max_batch is None and ort.device == torch.device("cpu")
    for index in range(2):  # chelsea, shapes one at a time
        single = RawOutputs(*(t[index : index + 1] for t in raw[:4]), raw.priors)
        assert_raw_close(ort(batch[index : index + 1]), single, rtol=1e-4, atol=1e-4)
    out = ort(batch)  # batch 3 through the same dynamic-batch model
    assert_raw_close(out, raw, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.priors, raw.priors)  # a constant, bit for bit


def test_graph_interface_and_checker(exported, fixture_model):
    result = exported["fp32"]
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert result.simplified and result.simplify_error is None
    # priors are made on the host, from the config and the recorded grid: no graph output
    assert [o.name for o in model.graph.output] == list(NETWORK_OUTPUT_NAMES) == ["loc", "conf", "coeffs", "proto"]
    assert RAW_OUTPUT_NAMES == ("loc", "conf", "coeffs", "proto", "priors")
    assert [i.name for i in model.graph.input] == ["images"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 320, 320] and result.batch_dynamic
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset >= 17 and 8 <= model.ir_version <= 10
    out_dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert out_dims["proto"] == ["batch", 80, 80, 32] and all(d[0] == "batch" for d in out_dims.values())
    meta = read_onnx_metadata(result.path)
    grid = meta["prior_grid"]
    assert grid == tuple(fixture_model.feature_sizes()) and grid[0] == (40, 40)  # P3 of a 320 input
    priors = prior_boxes(meta["config"], grid)
    assert priors.shape == (6402, 4) and prior_boxes(meta["config"], grid) is priors  # made once
    assert not priors.flags.writeable
    assert onnx_input_size(result.path) == 320 and not onnx_is_fp16(result.path)  # what the engine builder reads
    assert result.sha256 == sha256_file(result.path) and result.size_bytes == result.path.stat().st_size


def test_metadata_round_trip(exported, fixture_model):
    meta = read_onnx_metadata(exported["fp32"].path)
    config = fixture_model.config
    assert meta["config"] == config
    assert meta["input_size"] == 320 and meta["normalization"] == config.normalization
    assert meta["mean"] == pytest.approx(config.mean) and meta["std"] == pytest.approx(config.std)
    assert meta["class_names"] == config.class_names and meta["category_ids"] == config.category_ids
    assert meta["source_sha256"] == sha256_file(exported["checkpoint"])
    assert meta["trt_yolact_version"] == __version__
    assert meta["postprocess"] == "none" and meta["precision"] == "fp32"
    ort = runner(exported["fp32"].path)
    assert ort.config == config and ort.metadata["source_sha256"] == meta["source_sha256"]
    graph_meta = read_onnx_metadata(exported["graph"].path)
    assert graph_meta["postprocess"] == "graph" and graph_meta["postprocess_config"] == PostprocessConfig()
    assert "source_sha256" not in graph_meta


# ---------------------------------------------------------------------------------------------- FP16
def test_fp16_runs_in_onnxruntime_close_to_fp32(exported, images):
    batch, _, raw = images
    path = exported["fp16"]
    assert onnx_is_fp16(path) and read_onnx_metadata(path)["precision"] == "fp16"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    half = runner(path)
    assert half.precision == "fp16"
    out = half(batch[:2])
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out)
    assert torch.equal(out.priors, raw.priors)  # the priors constant stays exact FP32
    conf_error = (out.conf - raw.conf[:2]).abs().max().item()
    assert conf_error < 2e-2, conf_error
    # The best class of the confident priors survives FP16.
    confident = raw.conf[:2, :, 1:].max(dim=-1).values > 0.3
    assert confident.any()
    agree = out.conf[:2, :, 1:].argmax(-1)[confident] == raw.conf[:2, :, 1:].argmax(-1)[confident]
    assert agree.float().mean().item() > 0.95
    with pytest.raises(ExportError, match="already fp16"):
        convert_fp16(path, path.with_name("again.onnx"))


def resize_geometry_problems(model) -> list[str]:
    """Each Resize input giving its geometry that is not as TensorRT's parser wants it: roi/scales an FP32
    initializer or Constant read directly, sizes INT64 and never a Cast's output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for index, name in enumerate(node.input[1:], start=1):
            if not name:
                continue
            source = producers.get(name)
            if index == 3:  # sizes: computed from shapes is fine, but INT64 and not a cast float
                if source is not None and source.op_type == "Cast":
                    problems.append(f"{node.name}: sizes come from a Cast")
                continue
            if name in initializers:
                dtype = initializers[name].data_type
            elif source is not None and source.op_type == "Constant":
                dtype = next(a.t.data_type for a in source.attribute if a.name == "value")
            else:
                problems.append(f"{node.name}: input {index} is computed by {source.op_type if source else '?'}")
                continue
            if dtype != onnx.TensorProto.FLOAT:
                problems.append(f"{node.name}: input {index} is {onnx.TensorProto.DataType.Name(dtype)}")
    return problems


def test_fp16_keeps_resize_scales_fp32_constants(exported):
    fp16 = onnx.load(str(exported["fp16"]))
    assert sum(node.op_type == "Resize" for node in fp16.graph.node) >= 3  # the FPN's and the protonet's
    scales = [n for n in fp16.graph.node if n.op_type == "Resize" and len(n.input) > 2 and n.input[2]]
    assert scales, "no Resize with scales: the check below would check nothing"
    assert resize_geometry_problems(onnx.load(str(exported["fp32"].path))) == []
    assert resize_geometry_problems(fp16) == []


def test_resize_geometry_check_sees_a_cast_scales(exported):
    """The check above fails on the graph the converter made before (scales an FP16 constant behind a Cast)."""
    model = onnx.load(str(exported["fp16"]))
    producers = {out: node for node in model.graph.node for out in node.output}
    resize = next(n for n in model.graph.node if n.op_type == "Resize" and len(n.input) > 2 and n.input[2])
    constant = producers[resize.input[2]]
    value = next(a for a in constant.attribute if a.name == "value")
    value.t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(value.t).astype(np.float16)))
    cast = onnx.helper.make_node("Cast", [resize.input[2]], ["scales_fp32"], to=onnx.TensorProto.FLOAT)
    resize.input[2] = "scales_fp32"
    model.graph.node.append(cast)
    assert resize_geometry_problems(model) == [f"{resize.name}: input 2 is computed by Cast"]


# ------------------------------------------------------------------------------ graph post-processing
def test_graph_postprocess_matches_torch_postprocess(exported, images):
    batch, sizes, raw = images
    graph = runner(exported["graph"].path)
    assert graph.output_names == GRAPH_OUTPUT_NAMES and graph.postprocess == "graph"
    out = graph.run(batch[:2])  # batch 2: chelsea and shapes
    assert out["num_dets"].dtype == torch.int32 and out["classes"].dtype == torch.int32
    assert out["boxes"].shape == (2, 100, 4) and out["masks"].shape == (2, 100, 80, 80)
    two = RawOutputs(*(t[:2] for t in raw[:4]), raw.priors)
    selected = select_detections(two, LOW_RES)
    detections = assemble_masks(two, selected, sizes[:2], LOW_RES)
    for b, dets in enumerate(detections):
        n = len(dets)
        assert n > 0 and int(out["num_dets"][b]) == n
        assert out["classes"][b, :n].tolist() == dets.classes.tolist()
        np.testing.assert_allclose(out["scores"][b, :n].numpy(), dets.scores.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(out["boxes"][b, :n].numpy(), dets.boxes_relative.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(out["masks"][b, :n].numpy(), dets.masks.numpy(), rtol=0, atol=1e-3)
        assert (out["scores"][b, n:] == 0).all() and (out["classes"][b, n:] == -1).all()
    with pytest.raises(RunnerError, match="not the raw outputs"):
        graph(batch[:1])


def test_graph_postprocess_module_equals_select_detections_in_eager_mode(images):
    _, sizes, raw = images
    for cfg in (LOW_RES, PostprocessConfig(full_resolution_masks=False, cross_class_nms=True, score_threshold=0.2)):
        got = GraphPostprocess(cfg).run(raw)
        _assert_same_detections(got, raw, cfg, mask_atol=1e-5)


def _assert_same_detections(got, raw: RawOutputs, cfg: PostprocessConfig, mask_atol: float) -> None:
    got = [torch.as_tensor(t) for t in got]
    num_dets, boxes, scores, classes, masks = got
    selected = select_detections(raw, cfg)
    dets = assemble_masks(
        raw,
        selected,
        [(8, 8)] * raw.loc.shape[0],
        PostprocessConfig(**{**cfg.__dict__, "full_resolution_masks": False}),
    )
    assert num_dets.tolist() == selected.num_detections.tolist()
    for b, d in enumerate(dets):
        n = len(d)
        assert classes[b, :n].tolist() == d.classes.tolist()
        assert torch.equal(scores[b, :n], d.scores)
        torch.testing.assert_close(boxes[b, :n], d.boxes_relative, rtol=0, atol=1e-6)
        torch.testing.assert_close(masks[b, :n], d.masks, rtol=0, atol=mask_atol)
        assert (classes[b, n:] == -1).all() and (scores[b, n:] == 0).all() and (masks[b, n:] == 0).all()


def _synthetic_raw(seed: int, batch: int, priors: int, classes: int, k: int = 4) -> RawOutputs:
    """Raw outputs with many exactly tied scores (quantised), overlapping boxes and non-square prototypes."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(priors, 2, generator=g) * 0.4 + 0.3
    sizes = torch.rand(priors, 1, generator=g) * 0.3 + 0.1
    conf = torch.softmax(torch.randn(batch, priors, classes, generator=g) * 3, dim=-1)
    return RawOutputs(
        loc=torch.randn(batch, priors, 4, generator=g) * 0.3,
        conf=(conf * 8).round() / 8,
        coeffs=torch.tanh(torch.randn(batch, priors, k, generator=g)),
        proto=torch.relu(torch.randn(batch, 6, 9, k, generator=g)),
        priors=torch.cat([centers, sizes, sizes], dim=1),
    )


def test_exported_postprocess_handles_ties_and_few_candidates(tmp_path):
    """The post-processing alone in ONNX Runtime, fed the same raw outputs as torch: ties, images with no
    or fewer than top_k candidates, and more kept detections than output slots."""
    import onnxruntime as ort

    cfg = PostprocessConfig(conf_threshold=0.3, top_k=12, max_detections=10, full_resolution_masks=False)
    raw = _synthetic_raw(0, batch=3, priors=60, classes=4)
    path = tmp_path / "post.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            GraphPostprocess(cfg),
            tuple(raw),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=list(RawOutputs._fields),
            output_names=list(GRAPH_OUTPUT_NAMES),
            dynamic_axes={n: {0: "batch"} for n in ("loc", "conf", "coeffs", "proto", *GRAPH_OUTPUT_NAMES)},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    cases = [raw, _synthetic_raw(1, batch=2, priors=60, classes=4)]
    no_candidates = raw.conf.clone()
    no_candidates[1, :, 1:] = 0.01  # image 1: nothing above the threshold
    no_candidates[2, 5:, 1:] = 0.01  # image 2: only five candidates (fewer than top_k)
    cases.append(raw._replace(conf=no_candidates))
    for case in cases:
        got = session.run(None, {n: t.numpy() for n, t in zip(RawOutputs._fields, case)})
        _assert_same_detections([torch.from_numpy(v) for v in got], case, cfg, mask_atol=1e-6)
        eager = GraphPostprocess(cfg).run(case)
        _assert_same_detections(eager, case, cfg, mask_atol=1e-6)
    counts = [
        session.run(["num_dets"], {n: t.numpy() for n, t in zip(RawOutputs._fields, c)})[0].tolist() for c in cases
    ]
    assert cfg.max_detections in counts[0]  # more kept detections than output slots
    assert counts[-1][1] == 0 and 0 < counts[-1][2] <= 5 * 3  # no candidates; 5 candidates x 3 classes


# ------------------------------------------------------------------------------------- runner errors
def test_runner_rejects_missing_and_corrupt_files(tmp_path, exported):
    with pytest.raises(RunnerError, match="not found"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exported["fp32"].path.read_bytes()[:5000])
    with pytest.raises(RunnerError, match="not a loadable ONNX model"):
        OnnxRuntimeRunner(corrupt)
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        read_onnx_metadata(corrupt)
    with pytest.raises(RunnerError, match="not available"):
        OnnxRuntimeRunner(exported["fp32"].path, providers=["NoSuchExecutionProvider"])


# ------------------------------------------------------------------------------------- tiny model, CLI
TINY = YolactConfig(
    name="tiny",
    backbone=BackboneConfig(kind="resnet", layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_channels=8),
    max_size=64,
    class_names=("a", "b"),
    category_ids=(1, 2),
    fpn_channels=8,
    proto_channels=8,
    head_channels=8,
    mask_dim=4,
    pred_scales=((8,), (16,), (32,), (48,), (64,)),
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Yolact(TINY).eval()
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth", model)


def test_cli_writes_all_artifacts_atomically(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    code = export_main(["--weights", str(tiny_checkpoint), "--out", str(out), "--fp16", "--postprocess", "graph"])
    assert code == 0, capsys.readouterr().err
    names = sorted(os.listdir(out))  # no temp files, no staging folder
    assert names == ["model.fp16.onnx", "model.onnx", "model.postprocess.fp16.onnx", "model.postprocess.onnx"]
    table = capsys.readouterr().out
    assert "model.postprocess.fp16.onnx" in table and "fp16" in table and "KiB" in table
    for name in names:
        meta = read_onnx_metadata(out / name)
        assert meta["config"] == TINY and meta["source_sha256"] == sha256_file(tiny_checkpoint)
        assert meta["precision"] == ("fp16" if "fp16" in name else "fp32")
        assert meta["postprocess"] == ("graph" if "postprocess" in name else "none")
    images = torch.randn(2, 3, 64, 64)
    fp32, fp16 = runner(out / "model.onnx")(images), runner(out / "model.fp16.onnx")(images)
    assert (fp32.conf - fp16.conf).abs().max().item() < 2e-2
    graph16 = onnx.load(str(out / "model.postprocess.fp16.onnx"))
    casts = {n.output[0]: n for n in graph16.graph.node if n.op_type == "Cast"}
    to = {name: next(a.i for a in n.attribute if a.name == "to") for name, n in casts.items()}
    round_trips = [
        n.name
        for n in casts.values()
        if to[n.output[0]] == onnx.TensorProto.FLOAT and to.get(n.input[0]) == onnx.TensorProto.FLOAT16
    ]
    assert not round_trips  # the FP32 post-processing never passes through FP16
    detections = runner(out / "model.postprocess.fp16.onnx").run(images)
    assert detections["masks"].shape == (2, 100, 16, 16) and detections["boxes"].dtype == torch.float32


def test_cli_fixed_batch(tiny_checkpoint, tmp_path):
    out = tmp_path / "fixed"
    assert export_main(["--weights", str(tiny_checkpoint), "--out", str(out), "--batch", "2", "--no-simplify"]) == 0
    fixed = runner(out / "model.onnx")
    assert fixed.max_batch == 2
    images = torch.randn(3, 3, 64, 64)
    from trt_yolact.model.checkpoint import load_model

    with torch.no_grad():
        want = load_model(tiny_checkpoint)(images)
    assert_raw_close(fixed(images), want, rtol=1e-4, atol=1e-4)  # split into 2 + 1 (padded)


def test_cli_fails_cleanly(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        assert export_main(["--weights", str(tiny_checkpoint), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "cannot write" in err[0]
    assert blocker.read_text() == "not a folder"

    out = tmp_path / "never"
    assert export_main(["--weights", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"garbage")
    assert export_main(["--weights", str(corrupt), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "corrupt.pth"]

    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root ignores folder permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert export_main(["--weights", str(tiny_checkpoint), "--out", str(locked)]) == 2
        assert list(locked.iterdir()) == []


def test_failed_simplification_keeps_the_exported_model(tiny_checkpoint, tmp_path, monkeypatch):
    import onnxsim

    from trt_yolact.model.checkpoint import load_model

    def broken(*args, **kwargs):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    model = load_model(tiny_checkpoint)
    result = export_onnx(model, tmp_path / "m.onnx")
    assert not result.simplified and "simulated onnxsim crash" in result.simplify_error
    onnx.checker.check_model(str(result.path))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(images)
    assert_raw_close(runner(result.path)(images), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ExportError, match="opset"):
        export_onnx(model, tmp_path / "old.onnx", opset=11)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
